"""transformers / timm integration: InfoQConfig, the "infoq" quantizer, packed checkpoints.

Tiny models are built from configs and saved locally (no network). Every round trip must give
bit-identical outputs, the stored policy back unchanged, and a file within 3% of the theoretical size.
"""

import json
import os
import shutil

import pytest
import torch

import infoq_hf
from infoq_hf import InfoQConfig, expected_size_bytes, quantizable_layers, quantize_model
from infoq_hf.checkpoint import packed_layers, policy_of
from infoq_hf.policy import BitPolicy
from tests.helpers.models import tiny_bert_config, tiny_gpt2, tiny_llama, tiny_timm, tiny_vit

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForImageClassification,
    AutoModelForSequenceClassification,
    BertForSequenceClassification,
    LlamaForCausalLM,
)
from transformers.quantizers import auto as hf_auto  # noqa: E402

BITS = (2, 3, 4, 5, 6, 8)


def _mixed_policy(names, offset=0):
    """A policy touching every width, deterministic in layer order."""
    return {n: {"w_bits": BITS[(i + offset) % len(BITS)], "a_bits": None} for i, n in enumerate(names)}


def _file_bytes(directory):
    """Tensor bytes of the safetensors files (without their JSON headers, which hold names and digests)."""
    total = 0
    for f in os.listdir(directory):
        if f.endswith(".safetensors"):
            with open(os.path.join(directory, f), "rb") as handle:
                header_len = int.from_bytes(handle.read(8), "little")
            total += os.path.getsize(os.path.join(directory, f)) - 8 - header_len
    return total


def _assert_size_close(directory, model):
    on_disk, expected = _file_bytes(directory), expected_size_bytes(model)
    assert abs(on_disk - expected) / expected < 0.03, (on_disk, expected)


def _stored_policy(directory):
    return BitPolicy.from_dict(
        json.loads(open(os.path.join(directory, "config.json")).read())["quantization_config"]["policy"]
    )


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama_float")
    tiny_llama(vocab=256, hidden=128, intermediate=256).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llama_policy(llama_dir):
    model = LlamaForCausalLM.from_pretrained(llama_dir)
    return _mixed_policy([n for n in quantizable_layers(model) if n != "lm_head"])


@pytest.fixture(scope="module")
def llama_quantized(llama_dir, llama_policy, tmp_path_factory):
    """Policy-on-load, then save: (model, saved dir, input ids). Leftovers kept float32 (float_dtype=None):
    the dequantized model is compared with the packed model's exact float32 path."""
    model = AutoModelForCausalLM.from_pretrained(
        llama_dir, quantization_config=InfoQConfig(policy=llama_policy, group_size=32, float_dtype=None)
    )
    out = tmp_path_factory.mktemp("llama_q")
    model.save_pretrained(out)
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(1))
    return model, out, ids


# ----------------------------------------------------------------------------- config
def test_config_round_trip_keeps_policy_and_drops_in_memory_batches():
    spec = {"dataset": "text", "data_files": "x.txt", "num_samples": 8, "seq_len": 16}
    cfg = InfoQConfig(
        bits=[8, 2, 4],
        budget={"avg_bits": 3.5},
        calibration=spec,
        group_size=64,
        symmetric=True,
        policy={"a.b": 4, "re:c\\..*": {"w_bits": 2, "a_bits": 8}},
        method="hawq",
    )
    data = json.loads(json.dumps(cfg.to_dict()))
    back = InfoQConfig.from_dict(data)
    assert back == cfg and back.bits == [2, 4, 8] and back.policy == cfg.policy
    assert back.to_dict()["calibration"]["num_samples"] == 8
    in_memory = InfoQConfig(budget={"avg_bits": 4}, calibration=[{"input_ids": torch.ones(1, 4, dtype=torch.long)}])
    assert in_memory.to_dict()["calibration"] is None
    assert InfoQConfig.from_dict(in_memory.to_dict()).calibration is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({}, "needs a budget"),
        ({"budget": {"avg_bits": 4}, "bits": [2, 9]}, "from 2 to 8"),
        ({"budget": {"avg_bits": 4}, "bits": [1]}, "from 2 to 8"),
        ({"budget": {"avg_bits": 4}, "group_size": 0}, "group_size must be a positive int"),
        ({"budget": {"avg_bits": 4}, "group_size": 12.5}, "group_size must be a positive int"),
        ({"budget": {"bits": 4}}, "unknown budget keys"),
        ({"policy": {"x": {"w_bits": 12}}}, "policy entry 'x'"),
        ({"budget": {"avg_bits": 4}, "groupsize": 64}, "unknown settings"),
        ({"budget": {"avg_bits": 4}, "pin_first_last": "yes"}, "pin_first_last"),
        ({"budget": {"avg_bits": 4}, "clip_search": "yes"}, "clip_search must be True, False or 'auto'"),
    ],
)
def test_bad_configs_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        InfoQConfig(**kwargs)


def test_registration_is_idempotent():
    from infoq_hf.integrations.transformers import register

    register()
    register()
    assert hf_auto.AUTO_QUANTIZER_MAPPING["infoq"] is infoq_hf.InfoQQuantizer
    assert hf_auto.AUTO_QUANTIZATION_CONFIG_MAPPING["infoq"] is InfoQConfig


# ----------------------------------------------------------------------------- llama: policy on load, save, reload
def test_llama_policy_on_load_save_reload_is_bit_identical(llama_quantized, llama_policy):
    model, out, ids = llama_quantized
    assert len(packed_layers(model)) == len(llama_policy)
    assert type(model.lm_head) is torch.nn.Linear  # the head stays float by default
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)
    assert _stored_policy(out) == BitPolicy.from_dict(llama_policy)
    assert reloaded.config.quantization_config.policy == BitPolicy.from_dict(llama_policy)
    assert policy_of(reloaded) == policy_of(model)
    _assert_size_close(out, reloaded)


def test_cross_class_loading_matches_base_model(llama_quantized):
    model, out, ids = llama_quantized
    base = AutoModel.from_pretrained(out)
    seq = AutoModelForSequenceClassification.from_pretrained(out)
    bits = {n.removeprefix("model."): m.w_bits for n, m in packed_layers(model).items()}
    assert {n: m.w_bits for n, m in packed_layers(base).items()} == bits
    assert {n.removeprefix("model."): m.w_bits for n, m in packed_layers(seq).items()} == bits
    with torch.no_grad():
        assert torch.equal(base(ids).last_hidden_state, model.model(ids).last_hidden_state)
        assert torch.equal(seq.model(ids).last_hidden_state, model.model(ids).last_hidden_state)


def test_dequantize_gives_float_model_with_same_outputs(llama_quantized):
    _, out, ids = llama_quantized
    packed = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        expected = packed(ids).logits
    restored = AutoModelForCausalLM.from_pretrained(out).dequantize()
    assert not packed_layers(restored) and type(restored.model.layers[0].mlp.up_proj) is torch.nn.Linear
    assert getattr(restored.config, "quantization_config", None) is None
    with torch.no_grad():
        torch.testing.assert_close(restored(ids).logits, expected, atol=1e-5, rtol=1e-5)


def test_loading_without_infoq_registered_fails_loudly(llama_quantized, monkeypatch):
    _, out, _ = llama_quantized
    # As if infoq_hf had never been imported: transformers only warns about the unknown method and
    # would load a float model; the checkpoint's one-byte weight guards turn that into an error.
    monkeypatch.delitem(hf_auto.AUTO_QUANTIZATION_CONFIG_MAPPING, "infoq")
    monkeypatch.delitem(hf_auto.AUTO_QUANTIZER_MAPPING, "infoq")
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        AutoModelForCausalLM.from_pretrained(out)


def test_tensors_that_do_not_match_the_policy_name_the_layer(llama_quantized, tmp_path):
    _, out, _ = llama_quantized
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    config = json.loads((bad / "config.json").read_text())
    layer = "model.layers.1.mlp.up_proj"
    old = config["quantization_config"]["policy"][layer]["w_bits"]
    config["quantization_config"]["policy"][layer]["w_bits"] = 8 if old != 8 else 2
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"layer 'model\.layers\.1\.mlp\.up_proj' stores weight_packed"):
        AutoModelForCausalLM.from_pretrained(bad)
    config["quantization_config"]["policy"].pop(layer)  # packed tensors the policy does not list
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not list"):
        AutoModelForCausalLM.from_pretrained(bad)


@pytest.mark.filterwarnings(
    "ignore:You passed `quantization_config`:UserWarning"
)  # the warning is the documented precedence
def test_passed_config_on_a_quantized_checkpoint(llama_quantized):
    model, out, ids = llama_quantized
    with pytest.raises(ValueError, match="differs from the one stored"):
        AutoModelForCausalLM.from_pretrained(out, quantization_config=InfoQConfig(policy={"re:.*proj": 8}))
    with pytest.warns(UserWarning, match="from the model will be used"):  # stored policy wins over a budget
        again = AutoModelForCausalLM.from_pretrained(out, quantization_config=InfoQConfig(budget={"avg_bits": 8}))
    with torch.no_grad():
        assert torch.equal(again(ids).logits, model(ids).logits)


def test_user_config_object_is_not_mutated(llama_dir, llama_policy):
    cfg = InfoQConfig(budget={"avg_bits": 4}, method="weight_mse", bits=[2, 4, 8], group_size=32)
    AutoModelForCausalLM.from_pretrained(llama_dir, quantization_config=cfg)
    assert cfg.policy is None


# ----------------------------------------------------------------------------- quantize on load (search + allocate)
def test_quantize_on_load_with_weight_mse_and_budget(llama_dir, tmp_path):
    ids = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(3))
    cfg = InfoQConfig(budget={"avg_bits": 3.5}, method="weight_mse", bits=[2, 4, 8], group_size=32)
    model = AutoModelForCausalLM.from_pretrained(llama_dir, quantization_config=cfg)
    policy = model.config.quantization_config.policy
    assert policy is not None and len(policy) == len(packed_layers(model)) > 0
    assert infoq_hf.quantization_result(model).summary["avg_bits"] <= 3.5 + 1e-9
    assert {lb.w_bits for lb in policy.values()} <= {2, 4, 8}
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)
    assert _stored_policy(tmp_path) == policy
    _assert_size_close(tmp_path, reloaded)


def test_activation_bits_need_calibration_and_round_trip(llama_dir, llama_policy, tmp_path):
    policy = dict(llama_policy)
    first = next(iter(policy))
    policy[first] = {"w_bits": 4, "a_bits": 8}
    with pytest.raises(ValueError, match="needs calibration data"):
        AutoModelForCausalLM.from_pretrained(llama_dir, quantization_config=InfoQConfig(policy=policy, group_size=32))
    batches = [
        {"input_ids": torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(s))} for s in range(2)
    ]
    model = AutoModelForCausalLM.from_pretrained(
        llama_dir, quantization_config=InfoQConfig(policy=policy, group_size=32, calibration=batches)
    )
    assert model.get_submodule(first).a_bits == 8
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["quantization_config"]["calibration"] is None
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert float(reloaded.get_submodule(first).input_scale) == float(model.get_submodule(first).input_scale)
    with torch.no_grad():
        assert torch.equal(model(batches[0]["input_ids"]).logits, reloaded(batches[0]["input_ids"]).logits)


# ----------------------------------------------------------------------------- other architectures
def test_gpt2_conv1d_layers_round_trip_and_dequantize(tmp_path):
    tiny_gpt2(vocab=256, hidden=128, layers=2, heads=4, positions=64).save_pretrained(tmp_path / "float")
    policy = {"re:.*\\.(c_attn|c_proj|c_fc)": 3, "transformer.h.0.mlp.c_fc": 5}
    model = AutoModelForCausalLM.from_pretrained(
        tmp_path / "float", quantization_config=InfoQConfig(policy=policy, group_size=64, float_dtype=None)
    )
    assert model.transformer.h[0].mlp.c_fc.transposed_source and model.transformer.h[0].mlp.c_fc.w_bits == 5
    model.save_pretrained(tmp_path / "q")
    ids = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(0))
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    with torch.no_grad():
        logits = model(ids).logits
        assert torch.equal(logits, reloaded(ids).logits)
    _assert_size_close(tmp_path / "q", reloaded)
    restored = reloaded.dequantize()
    assert type(restored.transformer.h[0].mlp.c_fc).__name__ == "Conv1D"
    with torch.no_grad():
        torch.testing.assert_close(restored(ids).logits, logits, atol=1e-5, rtol=1e-5)


def test_bert_classifier_round_trip_and_base_model_loading(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_bert_config(num_labels=3)
    BertForSequenceClassification(cfg).save_pretrained(tmp_path / "float")
    names = [n for n in quantizable_layers(BertForSequenceClassification(cfg)) if n != "classifier"]
    model = AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "float", quantization_config=InfoQConfig(policy=_mixed_policy(names, 2), group_size=32)
    )
    assert type(model.classifier) is torch.nn.Linear
    model.save_pretrained(tmp_path / "q")
    ids = torch.randint(0, 256, (2, 9), generator=torch.Generator().manual_seed(0))
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "q")
    base = AutoModel.from_pretrained(tmp_path / "q")
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)
        assert torch.equal(base(ids).last_hidden_state, model.bert(ids).last_hidden_state)
    assert _stored_policy(tmp_path / "q") == BitPolicy.from_dict(_mixed_policy(names, 2))
    _assert_size_close(tmp_path / "q", reloaded)


def test_vit_image_classifier_round_trip(tmp_path):
    tiny_vit(
        image_size=32, patch_size=8, hidden=256, layers=2, heads=4, intermediate=512, num_labels=5
    ).save_pretrained(tmp_path / "float")
    # The patch projection stays float: ViT's forward reads `projection.weight.dtype`, which packed layers lack.
    policy = {"re:vit\\.layers\\..*": 4, "vit.layers.1.mlp.fc2": 2, "vit.layers.0.attention.q_proj": 8}
    model = AutoModelForImageClassification.from_pretrained(
        tmp_path / "float", quantization_config=InfoQConfig(policy=policy, group_size=64, conv_group_size=None)
    )
    model.save_pretrained(tmp_path / "q")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "q")
    assert reloaded.vit.layers[1].mlp.fc2.w_bits == 2 and reloaded.vit.layers[0].attention.q_proj.w_bits == 8
    with torch.no_grad():
        assert torch.equal(model(pixel_values=x).logits, reloaded(pixel_values=x).logits)
    _assert_size_close(tmp_path / "q", reloaded)


# ----------------------------------------------------------------------------- timm
timm = pytest.importorskip("timm")


def test_timm_save_load_quantized_is_bit_identical(tmp_path):
    model = tiny_timm("resnet10t")
    policy = _mixed_policy([n for n in quantizable_layers(model) if n != "fc"])
    quantize_model(model, policy)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
    out = infoq_hf.save_quantized(model, tmp_path / "ckpt", policy)
    assert sorted(os.listdir(out)) == ["config.json", "infoq_config.json", "model.safetensors"]
    stored = json.loads((out / "infoq_config.json").read_text())
    assert stored["format_version"] == 1 and BitPolicy.from_dict(stored["policy"]) == BitPolicy.from_dict(policy)
    assert json.loads((out / "config.json").read_text())["architecture"] == "resnet10t"
    loaded = infoq_hf.load_quantized(out)
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)
    assert policy_of(loaded) == BitPolicy.from_dict(policy)
    _assert_size_close(out, loaded)
    # A plain module loads into a float instance passed in.
    into = infoq_hf.load_quantized(out, model=tiny_timm("resnet10t", seed=None))
    with torch.no_grad():
        assert torch.equal(into(x), expected)


def test_timm_save_is_atomic_and_checks_the_policy(tmp_path, monkeypatch):
    model = tiny_timm("resnet10t")
    policy = {"re:layer.*": 4}
    quantize_model(model, policy)
    target = tmp_path / "ckpt"
    infoq_hf.save_quantized(model, target)
    before = sorted(os.listdir(target)), (target / "model.safetensors").read_bytes()
    with pytest.raises(ValueError, match="does not describe the packed model"):
        infoq_hf.save_quantized(model, target, {"re:layer.*": 2})

    import infoq_hf.checkpoint as ckpt

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "write_safetensors", broken)
    with pytest.raises(OSError, match="disk full"):
        infoq_hf.save_quantized(model, target)
    assert (sorted(os.listdir(target)), (target / "model.safetensors").read_bytes()) == before
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]  # no temporary folder left behind


def test_timm_wrapper_policy_on_load_round_trip(tmp_path):
    from transformers import TimmWrapperConfig, TimmWrapperForImageClassification

    torch.manual_seed(0)
    TimmWrapperForImageClassification(TimmWrapperConfig(architecture="resnet10t", num_labels=10)).save_pretrained(
        tmp_path / "float"
    )
    timm_names = [n for n in quantizable_layers(tiny_timm("resnet10t")) if n != "fc"]
    policy = _mixed_policy(timm_names, 1)  # timm names, matched inside the wrapper's `timm_model.`
    model = AutoModelForImageClassification.from_pretrained(
        tmp_path / "float", quantization_config=InfoQConfig(policy=policy, group_size=None)
    )
    assert len(packed_layers(model)) == len(policy)
    model.save_pretrained(tmp_path / "q")
    reloaded = AutoModelForImageClassification.from_pretrained(tmp_path / "q")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(x).logits, reloaded(x).logits)
    _assert_size_close(tmp_path / "q", reloaded)
