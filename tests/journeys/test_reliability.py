"""Nothing lost: a save failing at any write step (once or for good) or on a full disk keeps the previous
checkpoint; tied weights are one tensor in accounting, allocation and checkpoint. Tiny models built from
configs; no network."""

from __future__ import annotations

import builtins
import errno
import io
import os
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
import safetensors.torch
import torch
import torch.nn as nn

import infoq_hf
from infoq_hf import InfoQConfig, load_quantized, quantize_model, save_quantized
from infoq_hf.atomic_save import RestoreFailedError
from infoq_hf.checkpoint import atomic_checkpoint
from tests.helpers.models import tiny_llama, tiny_llama_config

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


# ----------------------------------------------------------------------------- saves
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


# ----------------------------------------------------------------------------- tied weights
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
