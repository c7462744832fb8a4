"""The vLLM target of the compressed-tensors export: the rules of vLLM 0.33.0's loader (infoq_hf.vllm_rules),
the layout of its packed zero points, the allocation constraints, and the tokenizer files of every export."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from infoq_hf import quantizable_layers, quantize_model
from infoq_hf.export import export_compressed_tensors
from infoq_hf.vllm_rules import checkpoint_shapes, fused_groups, vllm_allocation_constraints, vllm_problems
from tests.helpers.models import make_tiny_llama, tiny_llama, tiny_packed_llama


def _layers(model):
    return [n for n in quantizable_layers(model) if n != "lm_head"]


def _quantized(policy_of, symmetric=True, **config):
    model = tiny_llama(**config)
    return quantize_model(model, {n: policy_of(n) for n in _layers(model)}, group_size=32, symmetric=symmetric)


def _problems_on_disk(folder, kernels="any"):
    qc = json.loads((folder / "config.json").read_text())["quantization_config"]
    return vllm_problems(qc, checkpoint_shapes(load_file(folder / "model.safetensors")), kernels)


@pytest.mark.parametrize("symmetric", [True, False], ids=["symmetric", "asymmetric"])
@pytest.mark.parametrize("bits", [3, 4])
def test_vllm_export_of_a_policy_with_tied_fused_groups_passes_the_rules(tmp_path, bits, symmetric):
    model = _quantized(lambda n: bits + n.endswith(("o_proj", "down_proj")), symmetric)  # mixed, fused groups agree
    out = export_compressed_tensors(model, tmp_path / "vllm", target="vllm")
    assert _problems_on_disk(out) == []
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert {g["weights"]["strategy"] for g in qc["config_groups"].values()} == {"group"}
    assert {g["weights"]["num_bits"] for g in qc["config_groups"].values()} == {bits, bits + 1}
    stored = load_file(out / "model.safetensors")
    name = "model.layers.0.self_attn.k_proj"  # 32 x 64
    assert stored[f"{name}.weight_packed"].shape == (32, 64 * bits // 32)
    if not symmetric:
        assert stored[f"{name}.weight_zero_point"].dtype == torch.int32
        assert stored[f"{name}.weight_zero_point"].shape == (32 * bits // 32, 2)


def test_default_export_is_refused_by_the_rules_for_its_block_zero_points(tmp_path):
    out = export_compressed_tensors(_quantized(lambda n: 4, symmetric=False), tmp_path / "hf")
    problems = _problems_on_disk(out)
    assert len(problems) == 14 and all("strategy 'block'" in p and "target='vllm'" in p for p in problems)
    out = export_compressed_tensors(_quantized(lambda n: 4, symmetric=True), tmp_path / "hf-sym")
    assert _problems_on_disk(out) == []  # symmetric layers: one layout for both


def test_packed_zero_points_are_compressed_tensors_layout():
    helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
    from infoq_hf.export import pack_rows_int32

    model = tiny_packed_llama(symmetric=False)  # every width 2..8
    for name, layer in model.named_modules():
        if not hasattr(layer, "weight_zero_point") or layer.weight_zero_point is None:
            continue
        bits = layer.w_bits
        ours = pack_rows_int32(layer.weight_zero_point.t(), bits).t().contiguous()
        signed = (layer.weight_zero_point.to(torch.int16) - (1 << (bits - 1))).to(torch.int8)
        assert torch.equal(ours, helpers.pack_to_int32(signed, bits, packed_dim=0)), name


def test_vllm_export_decodes_with_compressed_tensors_to_the_packed_weights(tmp_path):
    helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
    model = _quantized(lambda n: 4 if "mlp" in n else 3, symmetric=False)
    out = export_compressed_tensors(model, tmp_path / "vllm", target="vllm")
    stored = load_file(out / "model.safetensors")
    for name in _layers(model):
        layer = model.get_submodule(name)
        rows, cols = layer.weight_shape
        q = helpers.unpack_from_int32(stored[f"{name}.weight_packed"], layer.w_bits, torch.Size([rows, cols]))
        scale = stored[f"{name}.weight_scale"]
        zp = helpers.unpack_from_int32(stored[f"{name}.weight_zero_point"], layer.w_bits, scale.shape, packed_dim=0)
        weight = (q.float().view(rows, scale.shape[1], -1) - zp.float().unsqueeze(-1)) * scale.unsqueeze(-1)
        assert torch.equal(weight.reshape(rows, cols), layer.dequantized_weight()), name


def test_qkv_at_different_widths_is_refused_naming_the_layers(tmp_path):
    model = _quantized(lambda n: 3 if n.endswith("k_proj") else 4)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.q_proj.*different schemes.*k_proj=3b") as e:
        export_compressed_tensors(model, tmp_path / "vllm", target="vllm")
    assert "vllm_allocation_constraints" in str(e.value) and "nothing written" in str(e.value)
    assert not (tmp_path / "vllm").exists()
    export_compressed_tensors(model, tmp_path / "hf")  # the transformers target holds any mix


def test_widths_marlin_cannot_run_are_refused_naming_the_layer(tmp_path):
    model = _quantized(lambda n: 3)
    with pytest.raises(
        ValueError, match=r"layer 'model\.layers\.0\.mlp\.down_proj': 3-bit symmetric.*Marlin.*\[4, 8\]"
    ):
        export_compressed_tensors(model, tmp_path / "m", target="vllm", kernels="marlin")
    assert not (tmp_path / "m").exists()
    asym8 = _quantized(lambda n: 8, symmetric=False)
    with pytest.raises(ValueError, match=r"8-bit asymmetric.*\[4\]"):
        export_compressed_tensors(asym8, tmp_path / "m", target="vllm", kernels="marlin")
    export_compressed_tensors(
        _quantized(lambda n: 8 if "mlp" in n else 4), tmp_path / "m", target="vllm", kernels="marlin"
    )
    assert _problems_on_disk(tmp_path / "m", kernels="marlin") == []


def test_partly_float_fused_group_and_unsliceable_zero_points_are_refused(tmp_path):
    model = tiny_llama()
    quantize_model(model, {n: 4 for n in _layers(model) if not n.endswith("up_proj")}, group_size=32)
    with pytest.raises(ValueError, match=r"'model\.layers\.0\.mlp\.up_proj'\] are float.*partly quantized"):
        export_compressed_tensors(model, tmp_path / "a", target="vllm")
    # q: 48 outputs x 3 bits, k/v: 24 x 3, not whole words: vLLM slices a fused layer's zero points per word
    odd = _quantized(lambda n: 3, symmetric=False, hidden=48, heads=4, kv_heads=2, intermediate=64)
    first = r"\['model\.layers\.0\.self_attn\.q_proj', 'model\.layers\.0\.self_attn\.k_proj'"
    with pytest.raises(ValueError, match=r"asymmetric 3-bit zero points of " + first):
        export_compressed_tensors(odd, tmp_path / "b", target="vllm")
    export_compressed_tensors(
        _quantized(lambda n: 3, symmetric=True, hidden=48, heads=4, kv_heads=2, intermediate=64),
        tmp_path / "c",
        target="vllm",
    )


@pytest.mark.parametrize(("kernels", "symmetric"), [("any", False), ("marlin", True)])
def test_allocation_under_the_vllm_constraints_exports_for_vllm(tmp_path, kernels, symmetric):
    from infoq_hf import Budget, allocate, search

    model = tiny_llama()
    table = search(
        model, None, bits=[2, 3, 4, 8], method="weight_mse", group_size=32, skip_modules=["lm_head"], progress=False
    )
    constraints = vllm_allocation_constraints(table.layers, kernels=kernels, symmetric=symmetric)
    assert constraints["tie"] == fused_groups(table.layers) and len(constraints["tie"]) == 4
    bits = [b for b in table.bits if b in constraints["bits"]]
    assert bits == ([2, 3, 4, 8] if kernels == "any" else [4, 8])
    policy = allocate(table, Budget(avg_bits=5.0 if kernels == "marlin" else 3.5), tie=constraints["tie"], bits=bits)
    widths = {n: policy[n].w_bits for n in table.layers}
    assert len(set(widths.values())) > 1  # a real mix
    quantize_model(model, widths, group_size=32, symmetric=symmetric)
    export_compressed_tensors(model, tmp_path / "vllm", target="vllm", kernels=kernels)


def test_unknown_target_or_kernels_are_refused(tmp_path):
    model = _quantized(lambda n: 4)
    with pytest.raises(ValueError, match="target must be one of"):
        export_compressed_tensors(model, tmp_path / "x", target="sglang")
    with pytest.raises(ValueError, match="kernels must be one of"):
        export_compressed_tensors(model, tmp_path / "x", target="vllm", kernels="machete")


@pytest.mark.parametrize("target", ["transformers", "vllm"])
def test_tokenizer_chat_template_and_generation_config_are_copied(tmp_path, target):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from infoq_hf import InfoQConfig

    source = make_tiny_llama(tmp_path / "float")
    (source / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    names = [n for n in quantizable_layers(tiny_llama(vocab=256)) if n != "lm_head"]
    model = AutoModelForCausalLM.from_pretrained(
        source, quantization_config=InfoQConfig(policy={n: 4 for n in names}, group_size=32)
    )
    model.save_pretrained(tmp_path / "infoq")
    AutoTokenizer.from_pretrained(source).save_pretrained(tmp_path / "infoq")
    (tmp_path / "infoq" / "chat_template.jinja").write_text((source / "chat_template.jinja").read_text())
    out = export_compressed_tensors(tmp_path / "infoq", tmp_path / "out", target=target)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        assert (out / f).read_bytes() == (tmp_path / "infoq" / f).read_bytes(), f
    tok = AutoTokenizer.from_pretrained(out)
    assert tok("w1 w2").input_ids == AutoTokenizer.from_pretrained(source)("w1 w2").input_ids
    assert tok.apply_chat_template([{"role": "user", "content": "w3"}], tokenize=False) == "w3"
    # a model object takes the folder explicitly; without one nothing but the model is written
    packed = _quantized(lambda n: 4)
    bare = export_compressed_tensors(packed, tmp_path / "bare", target=target)
    assert not (bare / "tokenizer.json").exists()
    given = export_compressed_tensors(packed, tmp_path / "given", target=target, tokenizer_dir=source)
    assert (given / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()


def test_cli_export_target_vllm(tmp_path, capsys):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from infoq_hf import InfoQConfig
    from infoq_hf.cli import main
    from tests.helpers.models import tiny_llama_config

    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config()).save_pretrained(tmp_path / "float")
    names = _layers(tiny_llama())
    for label, policy in (("ok", {n: 4 for n in names}), ("bad", {n: 3 if "k_proj" in n else 4 for n in names})):
        model = AutoModelForCausalLM.from_pretrained(
            tmp_path / "float", quantization_config=InfoQConfig(policy=policy, group_size=32)
        )
        model.save_pretrained(tmp_path / label)
    assert (
        main(
            [
                "export",
                str(tmp_path / "ok"),
                "--format",
                "compressed-tensors",
                "--target",
                "vllm",
                "--out",
                str(tmp_path / "ok-vllm"),
            ]
        )
        == 0
    )
    assert "passed the rules of vLLM 0.33.0" in capsys.readouterr().out
    assert (
        main(
            [
                "export",
                str(tmp_path / "bad"),
                "--format",
                "compressed-tensors",
                "--target",
                "vllm",
                "--out",
                str(tmp_path / "bad-vllm"),
            ]
        )
        == 2
    )
    assert "different schemes" in capsys.readouterr().err and not (tmp_path / "bad-vllm").exists()


@pytest.mark.slow
def test_vllm_itself_accepts_the_tiny_exports():
    """benchmarks/vllm_check.py --demo under the vLLM venv that benchmarks/vllm_venv.sh builds (skipped without)."""
    import subprocess
    import sys
    from pathlib import Path

    from benchmarks.vllm_check import DEFAULT_VLLM_PYTHON

    if not Path(DEFAULT_VLLM_PYTHON).is_file():
        pytest.skip("no vLLM venv; build it with `bash benchmarks/vllm_venv.sh`")
    done = subprocess.run(
        [sys.executable, "benchmarks/vllm_check.py", "--demo"], capture_output=True, text=True, timeout=1800
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count("8/8 layers accepted by vLLM") == 4
