"""Nothing lost, nothing silently wrong: atomic saves, tied weights, header checks, the import guard,
input validation and CLI exit codes. Tiny models built from configs; no network."""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.nn as nn
from conftest import make_calibration_text, make_tiny_llama, tiny_llama, tiny_llama_config

import infoq_hf
import infoq_hf.cli
import infoq_hf.pipeline.stages
from infoq_hf import InfoQConfig, load_quantized, quantize_model, save_quantized
from infoq_hf.atomic_save import RestoreFailedError
from infoq_hf.checkpoint import atomic_checkpoint

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    LlamaForCausalLM,
    modeling_utils,  # noqa: E402
)


# ----------------------------------------------------------------------------- helpers
def _mlp(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


def _packed_mlp(bits=4, seed=0) -> nn.Module:
    return quantize_model(_mlp(seed), {"0": bits, "2": bits})


X = torch.randn(3, 16, generator=torch.Generator().manual_seed(5))


def _mlp_output(directory) -> torch.Tensor:
    with torch.no_grad():
        return load_quantized(directory, model=_mlp(seed=99))(X)


def _listing(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def llama_float_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama_float")
    tiny_llama().save_pretrained(path)
    return path


def _llama_on_load(float_dir, bits):
    policy = {"re:model\\.layers\\..*": bits}
    return AutoModelForCausalLM.from_pretrained(
        float_dir, quantization_config=InfoQConfig(policy=policy, group_size=32)
    )


IDS = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(3))


def _llama_logits(directory) -> torch.Tensor:
    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(directory)(IDS).logits


class FaultAt:
    """Count every write step of a save (file opens for writing, safetensors writes, mkdir, link,
    rename, replace, fsync) and raise ENOSPC at step `k` (never, with k=0), or at every step from `k` on
    when `persistent` (a disk that keeps failing)."""

    def __init__(self, monkeypatch, k: int = 0, persistent: bool = False):
        self.k, self.count, self._mkdir, self.persistent = k, 0, os.mkdir, persistent
        for owner, name in (
            (os, "replace"),
            (os, "rename"),
            (os, "link"),
            (os, "fsync"),
            (os, "mkdir"),
            (safetensors.torch, "save_file"),
            (modeling_utils, "safe_save_file"),
        ):
            monkeypatch.setattr(owner, name, self._wrap(getattr(owner, name)))
        for owner in (builtins, io):
            monkeypatch.setattr(owner, "open", self._wrap(owner.open, opener=True))

    def _wrap(self, fn, opener=False):
        def step(*args, **kwargs):
            mode = (args[1] if len(args) > 1 else kwargs.get("mode", "r")) if opener else "w"
            if fn is self._mkdir and os.path.isdir(args[0]):
                mode = "r"  # makedirs(exist_ok=True) on an existing folder writes nothing
            if isinstance(mode, str) and any(c in mode for c in "wax+"):
                self.count += 1
                if self.count == self.k or (self.persistent and 0 < self.k <= self.count):
                    raise OSError(errno.ENOSPC, f"injected: no space left (write step {self.k})")
            return fn(*args, **kwargs)

        return step


def _count_steps(monkeypatch, save) -> int:
    with monkeypatch.context() as m:
        counter = FaultAt(m)
        save()
    return counter.count


# ----------------------------------------------------------------------------- 1-3: saves
def test_save_keeps_other_files_and_refuses_a_file_target(tmp_path):
    target = tmp_path / "d"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    (target / "data").mkdir()
    (target / "data" / "x.bin").write_bytes(b"\x01\x02")
    save_quantized(_packed_mlp(), target)
    assert (target / "notes.txt").read_text() == "mine" and (target / "data" / "x.bin").read_bytes() == b"\x01\x02"
    assert sorted(p.name for p in target.iterdir()) == ["data", "infoq_config.json", "model.safetensors", "notes.txt"]
    torch.testing.assert_close(_mlp_output(target), _packed_mlp()(X), rtol=0, atol=0)

    a_file = tmp_path / "f"
    a_file.write_text("keep me")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        save_quantized(_packed_mlp(), a_file)
    assert a_file.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["d", "f"]


def test_transformers_save_keeps_other_files(llama_float_dir, tmp_path):
    target = tmp_path / "ckpt"
    target.mkdir()
    (target / "notes.txt").write_text("mine")
    model = _llama_on_load(llama_float_dir, 4)
    infoq_hf.save(model, target)
    assert (target / "notes.txt").read_text() == "mine"
    with torch.no_grad():
        assert torch.equal(_llama_logits(target), model(IDS).logits)
    assert not [p for p in tmp_path.rglob(".infoq-save-*")]


def test_save_into_dot_mode_follows_umask_and_racing_saves_leave_no_staging(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    save_quantized(_packed_mlp(), ".")
    assert sorted(os.listdir(work)) == ["infoq_config.json", "model.safetensors"]
    torch.testing.assert_close(_mlp_output(work), _packed_mlp()(X), rtol=0, atol=0)

    old = os.umask(0o022)
    try:
        save_quantized(_packed_mlp(), tmp_path / "fresh")
    finally:
        os.umask(old)
    assert (tmp_path / "fresh").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "fresh" / "model.safetensors").stat().st_mode & 0o777 == 0o644

    # Another save creates the target while this one is staging: the files are merged, nothing leaks.
    racing = tmp_path / "racing"
    with atomic_checkpoint(racing) as staging:
        (staging / "a.txt").write_text("mine")
        save_quantized(_packed_mlp(), racing)
    assert sorted(os.listdir(racing)) == ["a.txt", "infoq_config.json", "model.safetensors"]
    assert not [p for p in tmp_path.rglob(".infoq-save-*")]


def _save_with_fault(save, monkeypatch, k, persistent):
    """Run `save` with a fault from write step k; return "raised", "restore failed" (with the error) or
    "warned" (only the flush after the last rename failed: the new checkpoint is in)."""
    with monkeypatch.context() as m:
        FaultAt(m, k, persistent)
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                save()
        except RestoreFailedError as e:
            assert "no space left" in str(e) and str(e.backup) in str(e), k
            return "restore failed", e
        except OSError as e:
            assert "no space left" in str(e), (k, e)
            return "raised", None
    assert any("flushing the folder to disk failed" in str(w.message) for w in caught), k
    return "warned", None


def _recover(target: Path, error: RestoreFailedError) -> None:
    """What a RestoreFailedError's message tells the user to do: move the backup's files back, delete the new."""
    for name in error.new:
        (shutil.rmtree if (target / name).is_dir() else os.unlink)(target / name)
    for item in list(error.backup.iterdir()):
        os.replace(item, target / item.name)
    error.backup.rmdir()


@pytest.mark.parametrize("persistent", [False, True], ids=["one-off", "persistent"])
def test_a_save_failing_at_every_write_step_keeps_the_previous_checkpoint(tmp_path, monkeypatch, persistent):
    target = tmp_path / "ckpt"
    save_quantized(_packed_mlp(4, seed=0), target)
    (target / "notes.txt").write_text("mine")
    before, expected = _listing(target), _mlp_output(target)
    new = _packed_mlp(3, seed=1)  # other bits and weights: a mix of old and new files would not load
    shutil.copytree(target, tmp_path / "probe")
    steps = _count_steps(monkeypatch, lambda: save_quantized(new, tmp_path / "probe"))
    fresh_steps = _count_steps(monkeypatch, lambda: save_quantized(new, tmp_path / "probe_new"))
    assert steps >= 12 and fresh_steps >= 8  # mkdirs, two file writes, fsyncs, links and renames
    outcomes = []
    for k in range(1, steps + 1):
        outcome, error = _save_with_fault(lambda: save_quantized(new, target), monkeypatch, k, persistent)
        outcomes.append(outcome)
        if outcome == "warned":  # only the flush after the last rename failed: the new checkpoint is in
            assert k == steps and torch.equal(_mlp_output(target), new(X)), k
            assert (target / "notes.txt").read_text() == "mine", k
        else:
            if outcome == "restore failed":
                assert error.backup.parent == target and error.backup.is_dir(), k
                _recover(target, error)
            assert _listing(target) == before, k
            assert torch.equal(_mlp_output(target), expected), k
        assert sorted(os.listdir(tmp_path)) == ["ckpt", "probe", "probe_new"], k  # no staging folder left
        assert not [p for p in target.iterdir() if p.name.startswith(".")], k
    assert outcomes[-1] == "warned" and outcomes.count("warned") == 1
    assert ("restore failed" in outcomes) == persistent  # a persistent fault defeats the undo: the backup is kept
    for k in range(1, fresh_steps + 1):
        fresh = tmp_path / f"new{k}"
        outcome, _ = _save_with_fault(lambda fresh=fresh: save_quantized(new, fresh), monkeypatch, k, persistent)
        assert outcome != "restore failed"  # into a new folder: nothing, or the whole new checkpoint
        assert (outcome == "warned") == (k == fresh_steps), k  # the parent's flush after the rename only warns
        if outcome == "warned":  # failed after the one rename (the parent's fsync): the new folder is whole
            assert torch.equal(_mlp_output(fresh), new(X)), k
            shutil.rmtree(fresh)
        assert sorted(os.listdir(tmp_path)) == ["ckpt", "probe", "probe_new"], k
    save_quantized(new, target)  # and without a fault the new checkpoint is in, the notes kept
    assert torch.equal(_mlp_output(target), new(X)) and (target / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("persistent", [False, True], ids=["one-off", "persistent"])
def test_transformers_save_failing_at_every_write_step_keeps_the_previous_checkpoint(
    llama_float_dir, tmp_path, monkeypatch, persistent
):
    target = tmp_path / "ckpt"
    infoq_hf.save(_llama_on_load(llama_float_dir, 4), target)
    before = _listing(target)  # byte-identical files after every failed save
    new = _llama_on_load(llama_float_dir, 2)
    with torch.no_grad():
        new_logits = new(IDS).logits
    shutil.copytree(target, tmp_path / "probe")
    shutil.copytree(target, tmp_path / "old")
    steps = _count_steps(monkeypatch, lambda: infoq_hf.save(new, tmp_path / "probe"))
    assert steps >= 6
    for k in range(1, steps + 1):
        outcome, error = _save_with_fault(lambda: infoq_hf.save(new, target), monkeypatch, k, persistent)
        if outcome == "warned":  # a flush after a complete rename failed: the new checkpoint is in
            assert torch.equal(_llama_logits(target), new_logits), k
            shutil.rmtree(target)
            shutil.copytree(tmp_path / "old", target)
        if outcome == "restore failed":
            _recover(target, error)
        assert _listing(target) == before, k
        assert sorted(os.listdir(tmp_path)) == ["ckpt", "old", "probe"], k
        assert not [p for p in target.iterdir() if p.name.startswith(".")], k
    new.save_pretrained(target)
    assert torch.equal(_llama_logits(target), new_logits)


def _mount_tmpfs(mount: Path, size_bytes: int) -> None:
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'}); the ENOSPC case is "
            "covered by the fault-injection tests"
        )


def test_a_full_disk_keeps_the_previous_checkpoint(llama_float_dir, tmp_path):
    old_model, new_model = _llama_on_load(llama_float_dir, 4), _llama_on_load(llama_float_dir, 8)
    infoq_hf.save(old_model, tmp_path / "sized")
    size = sum(p.stat().st_size for p in (tmp_path / "sized").iterdir())
    mount = tmp_path / "tmpfs"
    _mount_tmpfs(mount, size + size // 2)  # the old checkpoint fits, a staged second one does not
    try:
        target = mount / "ckpt"
        infoq_hf.save(old_model, target)
        before, expected = _listing(target), _llama_logits(target)
        with pytest.raises(OSError) as raised:
            infoq_hf.save(new_model, target)
        assert raised.value.errno == errno.ENOSPC or "No space left" in str(raised.value)
        assert _listing(target) == before and torch.equal(_llama_logits(target), expected)
        assert sorted(os.listdir(mount)) == ["ckpt"] and not [p for p in target.iterdir() if p.name.startswith(".")]
        with pytest.raises(OSError):  # a new folder on the full disk: nothing appears
            infoq_hf.save(_llama_on_load(llama_float_dir, 8), mount / "second")
        assert sorted(os.listdir(mount)) == ["ckpt"]
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=False)


# ----------------------------------------------------------------------------- 4: tied weights
def test_tied_weights_are_one_tensor_in_accounting_allocation_and_checkpoint(tmp_path):
    from infoq_hf import Budget, allocate, model_size_bytes, search
    from infoq_hf.checkpoint import policy_of

    model = tiny_llama(tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    with pytest.warns(UserWarning, match=r"\['lm_head'\] share their weight with \['model\.embed_tokens\.weight'\]"):
        table = search(model, None, bits=[2, 4, 8], method="weight_mse", group_size=32)
    assert "lm_head" not in table.layers
    weights = sum(info["params"] for info in table.layers.values()) * 4
    assert table.meta["float_bytes"] == model_size_bytes(model) - weights  # the embedding counted once, as float
    policy = allocate(table, Budget(avg_bits=3))
    quantize_model(model, policy, group_size=32)
    assert policy.report.size_bytes == model_size_bytes(model)  # what was allocated is what is stored
    assert model.lm_head.weight is model.model.embed_tokens.weight  # the tie is kept

    out = save_quantized(model, tmp_path / "ckpt")
    with safetensors.safe_open(str(out / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert ("lm_head.weight" in keys) != ("model.embed_tokens.weight" in keys)  # stored once
    loaded = load_quantized(out, model=LlamaForCausalLM(tiny_llama_config(tie_word_embeddings=True)))
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight and policy_of(loaded) == policy_of(model)
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, model(IDS).logits)


# ----------------------------------------------------------------------------- 5: header checks
@pytest.fixture(scope="module")
def llama_checkpoint(llama_float_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("llama_q")
    _llama_on_load(llama_float_dir, 4).save_pretrained(out)
    return out


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"symmetric": True}, r"stores \['weight_zero_point'\], which its config.json scheme"),
        ({"symmetric": False, "_from": {"symmetric": True}}, "lacks 'weight_zero_point'"),
        ({"policy_a_bits": 8}, "lacks 'input_scale'"),
        ({"group_size": 64}, "stores weight_scale as F32"),
    ],
)
def test_every_stored_tensor_is_checked_against_config_json(llama_float_dir, llama_checkpoint, tmp_path, edit, message):
    source = llama_checkpoint
    if "_from" in edit:  # a symmetric checkpoint, then its config claims asymmetric
        source = tmp_path / "sym"
        policy = {"re:model\\.layers\\..*": 4}
        AutoModelForCausalLM.from_pretrained(
            llama_float_dir, quantization_config=InfoQConfig(policy=policy, group_size=32, symmetric=True)
        ).save_pretrained(source)
    bad = tmp_path / "bad"
    shutil.copytree(source, bad)
    config = json.loads((bad / "config.json").read_text())
    q = config["quantization_config"]
    if "policy_a_bits" in edit:
        for entry in q["policy"].values():
            entry["a_bits"] = edit["policy_a_bits"]
    for key in ("symmetric", "group_size"):
        if key in edit:
            q[key] = edit[key]
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=message):
        AutoModelForCausalLM.from_pretrained(bad)


def test_push_refuses_a_folder_whose_config_was_edited(llama_checkpoint, tmp_path, hub_server):
    from infoq_hf.hub import SUMMARY_FILE, push_to_hub, read_checkpoint

    bad = tmp_path / "bad"
    shutil.copytree(llama_checkpoint, bad)
    config = json.loads((bad / "config.json").read_text())
    policy = config["quantization_config"]["policy"]
    summary = {"params": {name: 1 for name in policy}, "avg_bits": 4.0, "size_bytes": 1}  # the fast path: no load
    (bad / SUMMARY_FILE).write_text(json.dumps(summary))
    assert read_checkpoint(bad).policy  # untampered: fine
    config["quantization_config"]["symmetric"] = True
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="weight_zero_point"):
        push_to_hub(bad, "test-user/tampered", token=hub_server.token)
    assert hub_server.repo("test-user/tampered") is None


# ----------------------------------------------------------------------------- 7: the import guard
PLAIN_TRANSFORMERS = """
import json, sys
from transformers import AutoModelForCausalLM
result = {}
for kwargs in ({}, {"ignore_mismatched_sizes": True}):
    try:
        AutoModelForCausalLM.from_pretrained(sys.argv[1], **kwargs)
        result[str(kwargs)] = "loaded"
    except RuntimeError as e:
        result[str(kwargs)] = "raised: " + str(e)
result["infoq_hf imported"] = "infoq_hf" in sys.modules
print("RESULT " + json.dumps(result))
"""


def test_loading_without_infoq_hf_names_the_fix(llama_checkpoint):
    from infoq_hf.checkpoint import IMPORT_HINT_KEY

    done = subprocess.run(
        [sys.executable, "-c", PLAIN_TRANSFORMERS, str(llama_checkpoint)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "TRANSFORMERS_VERBOSITY": "warning"},
    )
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert result["infoq_hf imported"] is False
    assert result["{}"].startswith("raised")
    # transformers re-initialises mismatched tensors when told to ignore them; its load report, printed
    # for both calls, names the fix through the hint tensor.
    assert done.stderr.count(IMPORT_HINT_KEY) == 2 and "pip_install_infoq-hf__and_import_infoq_hf" in IMPORT_HINT_KEY


# ----------------------------------------------------------------------------- 6, 9: validation
def _classifier(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


def _labelled(n_batches=2, size=32, labels=None):
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n_batches):
        x = torch.randn(size, 16, generator=gen)
        y = torch.randint(0, 4, (size,), generator=gen) if labels is None else labels(size)
        out.append((x, y))
    return out


@pytest.mark.parametrize(
    "labels, message",
    [
        (lambda n: torch.randint(0, 4, (n,)).float(), "must be integer class indices"),
        (lambda n: torch.full((n,), 2), "every calibration label is the same class"),
        (lambda n: torch.randint(-1, 3, (n,)), r"labels range over \[-1, "),
        (lambda n: torch.randint(0, 6, (n,)), r"the model outputs 4 classes; labels must lie in \[0, 4\)"),
    ],
)
def test_infoq_labels_must_be_integer_classes_of_the_model(labels, message):
    from infoq_hf import search

    torch.manual_seed(0)
    with pytest.raises(ValueError, match=message):
        search(_classifier(), _labelled(labels=labels), bits=[2, 4], progress=False)


def test_bit_widths_are_never_rounded():
    from infoq_hf import search
    from infoq_hf.policy import BitPolicy

    with pytest.raises(ValueError, match="bit-width 2.5 must be an integer, got a float"):
        search(_classifier(), None, bits=(2.5, 4), method="weight_mse")
    for entry in ({"w_bits": 4.7}, {"w_bits": "4"}, {"w_bits": 4, "a_bits": 8.0}):
        with pytest.raises(ValueError, match="must be an integer"):
            BitPolicy({"0": entry})
    np = pytest.importorskip("numpy")
    assert (
        BitPolicy({"0": {"w_bits": np.int64(4)}})["0"].w_bits == 4
        and type(BitPolicy({"0": {"w_bits": np.int64(4)}})["0"].w_bits) is int
    )


def test_hawq_refuses_non_finite_inputs_and_traces():
    from infoq_hf import search

    bad = [(torch.full((32, 16), float("nan")), torch.randint(0, 4, (32,)))]
    with pytest.raises(ValueError, match="'inputs' holds NaN/inf"):
        search(_classifier(), bad, bits=[2, 4], method="hawq", hutchinson_samples=1, progress=False)
    model = _classifier()
    with torch.no_grad():
        model[2].bias[0] = float("inf")  # finite inputs, an overflowing loss
    with pytest.raises(ValueError, match="Hessian trace .* is not finite"):
        search(model, _labelled(1), bits=[2, 4], method="hawq", hutchinson_samples=1, progress=False)


def test_raw_torch_errors_become_errors_that_name_the_fix():
    from infoq_hf import search

    wrong_width = [(torch.randn(32, 15), torch.randint(0, 4, (32,)))]
    with pytest.raises(ValueError, match=r"cannot run calibration batch 0 \(tensor shapes \{'inputs': \[32, 15\]"):
        search(_classifier(), wrong_width, bits=[2, 4], progress=False)
    with pytest.raises(ValueError, match="'inputs' is empty"):
        search(_classifier(), [(torch.randn(0, 16), torch.zeros(0, dtype=torch.long))], bits=[2, 4], progress=False)
    for method in ("hawq", "oracle"):
        with pytest.raises(ValueError, match="the model outputs 4 classes"):
            search(
                _classifier(),
                _labelled(1, labels=lambda n: torch.full((n,), 7)),
                bits=[2, 4],
                method=method,
                hutchinson_samples=1,
                progress=False,
            )
    llama = tiny_llama()
    ids = torch.randint(0, 200, (4, 12))
    with pytest.raises(ValueError, match=r"token ids range over \[\d+, \d+\], but the model's vocabulary has 128"):
        search(llama, [{"input_ids": ids}], bits=[2, 4], progress=False)
    with torch.device("meta"):
        on_meta = _classifier()
    with pytest.raises(ValueError, match="on the meta device"):
        search(on_meta, _labelled(1), bits=[2, 4], progress=False)


# ----------------------------------------------------------------------------- 8: infeasible budgets
def test_an_infeasible_budget_is_refused_before_any_probing(monkeypatch):
    from infoq_hf import quantize_with_infoq
    from infoq_hf.allocation import InfeasibleBudgetError

    search_module = sys.modules["infoq_hf.sensitivity.search"]  # the package re-exports `search` by that name

    def no_probing(*args, **kwargs):
        raise AssertionError("probed before the budget was checked")

    monkeypatch.setattr(search_module, "_probe_all", no_probing)
    config = InfoQConfig(bits=[4, 8], budget={"avg_bits": 3}, calibration=_labelled(2))
    with pytest.raises(
        InfeasibleBudgetError, match=r"average bits 3 is infeasible: the smallest achievable average .* is 4 bits"
    ):
        quantize_with_infoq(_classifier(), config, progress=False)
    with pytest.raises(InfeasibleBudgetError, match="size budget"):
        quantize_with_infoq(
            _classifier(),
            InfoQConfig(bits=[2, 4], budget={"size_bytes": 100}, calibration=_labelled(2)),
            progress=False,
        )
    with pytest.raises(AssertionError, match="probed"):  # a feasible budget goes on to the search
        quantize_with_infoq(
            _classifier(), InfoQConfig(bits=[2, 4], budget={"avg_bits": 3}, calibration=_labelled(2)), progress=False
        )


# ----------------------------------------------------------------------------- 10, 11: the CLI
@pytest.fixture(scope="module")
def cli_assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return make_tiny_llama(root / "llama"), make_calibration_text(root / "calib.txt"), root


def _cli(argv, capsys):
    from infoq_hf.cli import main

    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip()


def test_cli_bad_input_exits_2_with_one_line(cli_assets, tmp_path, capsys, monkeypatch, hub_server):
    import infoq_hf.allocation
    import infoq_hf.checkpoint
    from infoq_hf.allocation import SolverUnavailableError

    llama, _, _ = cli_assets
    as_list = tmp_path / "list.json"
    as_list.write_text("[1, 2]")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    quantize = ["quantize", llama, "--bits", "2,4,8", "--avg-bits", "4", "--group-size", "32"]
    cases = [
        (["allocate", as_list, "--avg-bits", "3", "--out", tmp_path / "p.json"], "is not a sensitivity table"),
        ([*quantize, "--table", as_list, "--out", tmp_path / "o"], "got a JSON list"),
        ([*quantize, "--calib", empty, "--out", tmp_path / "o"], "is empty"),
    ]
    for argv, message in cases:
        code, err = _cli(argv, capsys)
        assert code == 2 and message in err and len(err.splitlines()) == 1, (argv, err)

    ok = tmp_path / "ok"
    assert _cli([*quantize, "--method", "weight_mse", "--out", ok], capsys)[0] == 0
    with monkeypatch.context() as m:  # a read-only --out (root ignores file modes, so the refusal is simulated)

        def refuse(home, prefix):
            raise PermissionError(errno.EACCES, "Permission denied", str(home))

        m.setattr(infoq_hf.atomic_save, "_make_dir", refuse)
        code, err = _cli([*quantize, "--method", "weight_mse", "--out", ok], capsys)
        assert code == 2 and "permission denied writing" in err, err
    with monkeypatch.context() as m:

        def size_limited(*args, **kwargs):
            raise SolverUnavailableError("solver='gurobi' cannot solve this model: size-limited license")

        m.setattr(infoq_hf.cli.allocate, "allocate", size_limited)  # where `infoq allocate` calls it
        code, err = _cli(
            [
                "allocate",
                ok / "infoq_sensitivity.json",
                "--avg-bits",
                "3",
                "--solver",
                "gurobi",
                "--out",
                tmp_path / "p.json",
            ],
            capsys,
        )
        assert code == 2 and "size-limited" in err, err

    truncated = tmp_path / "truncated"
    shutil.copytree(ok, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, err = _cli(["report", truncated], capsys)
    assert code == 2 and "truncated or corrupt" in err, err

    monkeypatch.setenv("HF_TOKEN", "hf_not_a_valid_token")
    code, err = _cli(["push", ok, "test-user/refused"], capsys)
    assert code == 2 and "refused the token (HTTP 401)" in err, err
    assert hub_server.repo("test-user/refused") is None


def test_cli_reuses_a_table_or_a_policy_and_records_no_local_paths(cli_assets, tmp_path, capsys, monkeypatch):
    import infoq_hf.sensitivity
    from infoq_hf.policy import BitPolicy

    llama, calib, _ = cli_assets
    first = tmp_path / "first"
    common = ["--bits", "2,4,8", "--group-size", "32"]
    assert (
        _cli(
            [
                "quantize",
                llama,
                *common,
                "--avg-bits",
                "5",
                "--calib",
                calib,
                "--samples",
                "4",
                "--seq-len",
                "12",
                "--batch-size",
                "4",
                "--out",
                first,
            ],
            capsys,
        )[0]
        == 0
    )

    def no_search(*args, **kwargs):
        raise AssertionError("searched again")

    monkeypatch.setattr(infoq_hf.pipeline.stages, "search", no_search)  # where the pipeline calls it
    monkeypatch.setattr(infoq_hf.cli.search, "search", no_search)  # where `infoq search` calls it
    from_table = tmp_path / "from_table"
    assert (
        _cli(
            [
                "quantize",
                llama,
                *common,
                "--avg-bits",
                "3",
                "--table",
                first / "infoq_sensitivity.json",
                "--out",
                from_table,
            ],
            capsys,
        )[0]
        == 0
    )
    policy_file = tmp_path / "policy.json"
    assert _cli(["allocate", first / "infoq_sensitivity.json", "--avg-bits", "3", "--out", policy_file], capsys)[0] == 0
    from_policy = tmp_path / "from_policy"
    assert _cli(["quantize", llama, *common, "--policy", policy_file, "--out", from_policy], capsys)[0] == 0

    def stored(folder):
        return BitPolicy.from_dict(json.loads((folder / "config.json").read_text())["quantization_config"]["policy"])

    assert stored(from_policy) == BitPolicy.from_json(policy_file) == stored(from_table)
    code, err = _cli(
        ["quantize", llama, *common, "--avg-bits", "3", "--policy", policy_file, "--out", tmp_path / "x"], capsys
    )
    assert code == 2 and "--policy applies a given policy as it is" in err

    monkeypatch.undo()
    assert _cli(["report", first], capsys)[0] == 0
    for name in ("config.json", "infoq_summary.json", "README.md"):
        text = (first / name).read_text()
        assert str(tmp_path) not in text and str(calib.parent) not in text, name
    assert "calib.txt" in (first / "config.json").read_text()  # the base name is what is recorded
