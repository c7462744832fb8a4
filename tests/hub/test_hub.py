"""Publishing to and loading from the Hub (the loopback server in tests/helpers/hub_server.py), the model card."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard, constants

import infoq_hf
from infoq_hf import Budget, InfoQConfig
from infoq_hf.allocation import allocate
from infoq_hf.hub import (
    TEMPLATE_PATH,
    HubPublishError,
    MissingTokenError,
    ModelCardError,
    RepoExistsError,
    load_from_hub,
    push_to_hub,
    render_model_card,
)
from infoq_hf.pipeline import quantize_with_infoq
from infoq_hf.sensitivity import search
from tests.helpers.models import make_tiny_llama, tiny_timm

REPO_ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def llama_quantized_dir(tmp_path_factory):
    """A quantized tiny Llama folder as `infoq quantize` leaves it (checkpoint + tokenizer + table)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    root = tmp_path_factory.mktemp("llama")
    src = make_tiny_llama(root / "float")
    model = LlamaForCausalLM.from_pretrained(src)
    table = search(
        model, None, bits=[2, 4, 8], method="weight_mse", group_size=32, skip_modules=["lm_head"], progress=False
    )
    policy = allocate(table, Budget(avg_bits=4))
    config = InfoQConfig(bits=[2, 4, 8], budget={"avg_bits": 4}, method="weight_mse", group_size=32, policy=policy)
    quantized = LlamaForCausalLM.from_pretrained(src, quantization_config=config)
    out = root / "quantized"
    quantized.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    table.save(out / "infoq_sensitivity.json")
    return out, quantized, table, policy


@pytest.fixture(scope="module")
def timm_quantized():
    model = tiny_timm()
    batches = [(torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([1, 2]))]
    table = search(model, batches, bits=[2, 4, 8], method="weight_mse", progress=False)
    policy = allocate(table, Budget(avg_bits=4))
    quantize_with_infoq(model, InfoQConfig(policy=policy, group_size=None), progress=False)
    return model, table, policy


def _front_matter(readme: bytes) -> dict:
    return ModelCard(readme.decode()).data.to_dict()


# ----------------------------------------------------------------------------- round trips
def test_transformers_round_trip_through_the_hub(hub_server, llama_quantized_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, quantized, table, policy = llama_quantized_dir
    commit = push_to_hub(
        out,
        "test-user/tiny-llama-infoq",
        token=hub_server.token,
        policy=policy,
        base_model="test-org/tiny-llama",
        calibration="wikitext",
    )
    files = hub_server.files("test-user/tiny-llama-infoq")
    for name in (
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "README.md",
        "infoq_sensitivity.json",
        "infoq_bits_per_layer.png",
        "infoq_sensitivity_heatmap.png",
        "infoq_pareto.png",
    ):
        assert name in files, name
    assert files["infoq_pareto.png"][:4] == b"\x89PNG"
    commits = hub_server.commits("test-user/tiny-llama-infoq")
    assert len(commits) == 2 and commits[0].oid == commit.oid  # repo creation + ONE upload commit

    meta = _front_matter(files["README.md"])
    assert meta["base_model"] == "test-org/tiny-llama" and meta["base_model_relation"] == "quantized"
    assert meta["library_name"] == "transformers"
    assert {"infoq", "mixed-precision"} <= set(meta["tags"])
    q = meta["quantization"]
    assert q["avg_bits"] == pytest.approx(policy.report.avg_bits, abs=1e-3)
    assert q["candidate_bits"] == [2, 4, 8] and q["budget"] == {"avg_bits": 4}
    assert q["sensitivity"] == "weight_mse" and q["calibration"] == {"dataset": "wikitext"}
    assert q["layers"] == len(policy) and sum(q["layers_per_bits"].values()) == len(policy)
    body = files["README.md"].decode()
    first = next(iter(policy))
    assert f"| `{first}` |" in body and "![bits per layer](infoq_bits_per_layer.png)" in body

    assert not any(Path(constants.HF_HUB_CACHE).iterdir())  # downloads start from an empty cache
    loaded = AutoModelForCausalLM.from_pretrained("test-user/tiny-llama-infoq")
    tok = AutoTokenizer.from_pretrained("test-user/tiny-llama-infoq")
    ids = tok("w1 w2 w3 w4 w5 w6", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, quantized(ids).logits)
    via_helper = load_from_hub("test-user/tiny-llama-infoq", revision=commit.oid)
    with torch.no_grad():
        assert torch.equal(via_helper(ids).logits, quantized(ids).logits)


def test_timm_round_trip_and_revisions(hub_server, timm_quantized, tmp_path):
    model, table, policy = timm_quantized
    first = push_to_hub(model, "test-org/tiny-resnet", token=hub_server.token, table=table, policy=policy)
    meta = _front_matter(hub_server.files("test-org/tiny-resnet")["README.md"])
    assert meta["library_name"] == "timm" and "base_model" not in meta  # no Hub id known: none invented
    assert meta["quantization"]["size_bytes"] == len(hub_server.files("test-org/tiny-resnet")["model.safetensors"])

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    loaded = load_from_hub("test-org/tiny-resnet")
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))

    # A second push (overwrite) of a different model; the first commit stays loadable by its sha.
    other, _, _ = timm_quantized_other()
    with pytest.raises(RepoExistsError, match="overwrite=True"):
        push_to_hub(other, "test-org/tiny-resnet", token=hub_server.token)
    second = push_to_hub(other, "test-org/tiny-resnet", token=hub_server.token, overwrite=True)
    assert "infoq_sensitivity.json" not in hub_server.files("test-org/tiny-resnet")  # stale files replaced
    with torch.no_grad():
        assert torch.equal(load_from_hub("test-org/tiny-resnet", revision=first.oid)(x), model(x))
        assert torch.equal(load_from_hub("test-org/tiny-resnet", revision=second.oid)(x), other(x))
        assert not torch.equal(other(x), model(x))


def timm_quantized_other():
    model = tiny_timm()
    policy = {n: {"w_bits": 8, "a_bits": None} for n in infoq_hf.quantizable_layers(model)}
    quantize_with_infoq(model, InfoQConfig(policy=policy, group_size=None), progress=False)
    return model, None, policy


# ----------------------------------------------------------------------------- failures leave nothing claimed
def test_no_token_is_a_clear_error(hub_server, timm_quantized):
    with pytest.raises(MissingTokenError, match=r"HF_TOKEN.*hf auth login"):
        push_to_hub(timm_quantized[0], "test-user/no-token")
    assert hub_server.repo("test-user/no-token") is None


def test_token_from_environment_is_used(hub_server, timm_quantized, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", hub_server.token)
    push_to_hub(timm_quantized[0], "test-user/env-token")
    assert "model.safetensors" in hub_server.files("test-user/env-token")


def test_existing_repo_without_overwrite_is_untouched(hub_server, timm_quantized):
    hub_server.api().create_repo("test-user/taken")
    with pytest.raises(RepoExistsError, match="overwrite=True"):
        push_to_hub(timm_quantized[0], "test-user/taken", token=hub_server.token)
    assert set(hub_server.files("test-user/taken")) == {".gitattributes"}
    assert len(hub_server.commits("test-user/taken")) == 1


def test_failed_commit_leaves_no_repo_and_says_so(hub_server, timm_quantized):
    hub_server.fail_commits = 403
    with pytest.raises(HubPublishError, match="single atomic commit.*nothing was published") as err:
        push_to_hub(timm_quantized[0], "test-user/broken", token=hub_server.token)
    assert "403" in str(err.value) and "deleted again" in str(err.value)
    assert hub_server.commit_attempts >= 1
    assert hub_server.repo("test-user/broken") is None  # the empty repo created for the push was removed


def test_failed_overwrite_keeps_the_previous_version(hub_server, timm_quantized):
    first = push_to_hub(timm_quantized[0], "test-user/stable", token=hub_server.token)
    hub_server.fail_commits = 403
    with pytest.raises(HubPublishError, match="none of its files were stored"):
        push_to_hub(timm_quantized_other()[0], "test-user/stable", token=hub_server.token, overwrite=True)
    assert hub_server.commits("test-user/stable")[0].oid == first.oid


def test_unreachable_endpoint_is_a_clear_error(hub_server, timm_quantized, monkeypatch):
    from huggingface_hub import hf_api

    dead = "http://127.0.0.1:9"  # the discard port: nothing listens
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    monkeypatch.setattr(hf_api.api, "endpoint", dead)
    with pytest.raises(HubPublishError, match="cannot reach the Hub at http://127.0.0.1:9.*nothing was created"):
        push_to_hub(timm_quantized[0], "test-user/offline", token=hub_server.token)
    assert hub_server.repo("test-user/offline") is None


def test_bad_inputs(hub_server, tmp_path, timm_quantized):
    with pytest.raises(ValueError, match="user-or-org/name"):
        push_to_hub(timm_quantized[0], "no-namespace", token=hub_server.token)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        push_to_hub(tmp_path / "missing", "test-user/x", token=hub_server.token)
    with pytest.raises(ValueError, match="no packed layers"):
        push_to_hub(tiny_timm(), "test-user/x", token=hub_server.token)
    with pytest.raises(ValueError, match="Hub model id"):
        push_to_hub(timm_quantized[0], "test-user/x", token=hub_server.token, base_model="/a/local/path")
    assert hub_server.repo("test-user/x") is None


# ----------------------------------------------------------------------------- the template
def test_model_card_template_exists_once():
    """The package data the code renders is the only template: model_cards/ and the docs point at it."""
    templates = sorted(
        p
        for top in REPO_ROOT.iterdir()
        if top.is_dir() and not top.name.startswith(".") and top.name not in ("build", "dist")
        for p in top.rglob("*.j2")
    )
    assert templates == [TEMPLATE_PATH.resolve()], templates


def test_template_errors_name_the_template_and_line(tmp_path):
    bad = tmp_path / "card.md.j2"
    bad.write_text("---\n{{ metadata_yaml }}\n---\n\n# {{ title }\n")
    with pytest.raises(ModelCardError, match=r"card\.md\.j2, line 5"):
        render_model_card({"metadata_yaml": "a: 1", "title": "t"}, bad)
    bad.write_text("---\n{{ metadata_yaml }}\n---\n\nline four\n{{ no_such_variable }}\n")
    with pytest.raises(ModelCardError, match=r"card\.md\.j2, line 6: UndefinedError.*no_such_variable"):
        render_model_card({"metadata_yaml": "a: 1"}, bad)
    with pytest.raises(ModelCardError, match="does not exist"):
        render_model_card({}, tmp_path / "missing.j2")


def test_card_context_matches_summary_numbers(llama_quantized_dir, tmp_path):
    from infoq_hf.hub import card_context, read_checkpoint

    out, quantized, table, policy = llama_quantized_dir
    info = read_checkpoint(out)
    ctx = card_context(info, "me/x")
    assert ctx["metadata"]["quantization"]["avg_bits"] == pytest.approx(policy.report.avg_bits, abs=1e-3)
    sens = {r["name"]: r["sensitivity"] for r in ctx["layers"]}
    for name, lb in policy.items():
        assert sens[name] == pytest.approx(table.w(name, lb.w_bits))
    assert json.loads(json.dumps(ctx["metadata"])) == ctx["metadata"]  # plain YAML/JSON values only
