"""compressed-tensors export: read back by transformers' own compressed-tensors quantizer, without infoq_hf."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn as nn
from transformers import LlamaForCausalLM

from infoq_hf import QuantLinear, quantizable_layers, quantize_model
from infoq_hf.export import COMPRESSED_TENSORS_VERSION, export_compressed_tensors, pack_rows_int32
from tests.helpers.models import tiny_llama, tiny_llama_config, tiny_packed_llama

_READER = """
import sys, torch
from transformers import AutoModelForCausalLM
model = AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32).eval()
assert not any(m.startswith("infoq_hf") for m in sys.modules), "the reader imported infoq_hf"
ids = torch.load(sys.argv[2])
with torch.no_grad():
    torch.save(model(input_ids=ids).logits, sys.argv[3])
"""


def test_compressed_tensors_is_pinned_to_the_version_whose_packing_we_write():
    ct = pytest.importorskip("compressed_tensors")
    assert ct.__version__ == COMPRESSED_TENSORS_VERSION


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("cols", [32, 50, 96])
def test_row_packing_matches_compressed_tensors(bits, cols):
    helpers = pytest.importorskip("compressed_tensors.compressors.pack_quantized.helpers")
    pack_to_int32, unpack_from_int32 = helpers.pack_to_int32, helpers.unpack_from_int32

    codes = torch.randint(0, 1 << bits, (5, cols), generator=torch.Generator().manual_seed(bits), dtype=torch.uint8)
    ours = pack_rows_int32(codes, bits)
    signed = (codes.to(torch.int32) - (1 << (bits - 1))).to(torch.int8)
    assert torch.equal(ours, pack_to_int32(signed, bits))
    assert torch.equal(unpack_from_int32(ours, bits, torch.Size([5, cols])), signed)


@pytest.mark.parametrize("symmetric", [False, True], ids=["asymmetric", "symmetric"])
def test_export_loads_in_plain_transformers_with_the_same_logits(tmp_path, symmetric):
    pytest.importorskip("compressed_tensors")
    model = tiny_packed_llama(symmetric=symmetric)
    assert {m.w_bits for m in model.modules() if isinstance(m, QuantLinear)} == set(range(2, 9))
    out = export_compressed_tensors(model, tmp_path / "ct")
    qc = json.loads((out / "config.json").read_text())["quantization_config"]
    assert qc["format"] == "pack-quantized" and qc["ignore"] == ["lm_head"]
    assert sorted(g["weights"]["num_bits"] for g in qc["config_groups"].values()) == list(range(2, 9))
    ids = torch.randint(0, 128, (2, 11), generator=torch.Generator().manual_seed(1))
    torch.save(ids, tmp_path / "ids.pt")
    subprocess.run(
        [sys.executable, "-c", _READER, str(out), str(tmp_path / "ids.pt"), str(tmp_path / "logits.pt")],
        check=True,
        timeout=300,
    )
    theirs = torch.load(tmp_path / "logits.pt")
    with torch.no_grad():
        ours = model(input_ids=ids).logits
    assert (theirs - ours).abs().max() <= 1e-4


def test_export_from_a_saved_checkpoint_folder(tmp_path):
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM

    from infoq_hf import InfoQConfig

    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config()).save_pretrained(tmp_path / "float")
    names = [n for n in quantizable_layers(LlamaForCausalLM(tiny_llama_config())) if n != "lm_head"]
    config = InfoQConfig(policy={n: 2 + i % 7 for i, n in enumerate(names)}, group_size=32)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "float", quantization_config=config)
    model.save_pretrained(tmp_path / "infoq")
    with pytest.raises(ValueError, match="is not an infoq checkpoint"):
        export_compressed_tensors(tmp_path / "float", tmp_path / "ct")
    out = export_compressed_tensors(tmp_path / "infoq", tmp_path / "ct")
    from safetensors.torch import load_file

    stored = load_file(out / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj"
    layer = model.get_submodule(name)
    assert stored[f"{name}.weight_packed"].dtype == torch.int32
    assert torch.equal(stored[f"{name}.weight_scale"], layer.weight_scale)
    assert stored[f"{name}.weight_zero_point"].dtype == torch.int8
    assert stored[f"{name}.weight_shape"].tolist() == [64, 64]
    assert not any(k.endswith(".weight") and k.startswith(name) for k in stored)
    # The CLI writes the same files.
    from infoq_hf.cli import main

    assert (
        main(["export", str(tmp_path / "infoq"), "--format", "compressed-tensors", "--out", str(tmp_path / "cli")]) == 0
    )
    assert (tmp_path / "cli" / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    assert (
        main(["export", str(tmp_path / "missing"), "--format", "compressed-tensors", "--out", str(tmp_path / "x")]) == 2
    )


def test_what_the_format_cannot_hold_is_refused_naming_the_layer(tmp_path):
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))
    quantize_model(model, {"0": {"w_bits": 4, "a_bits": 8}, "2": 4}, act_ranges={"0": (-1.0, 1.0)})
    with pytest.raises(ValueError, match=r"layer '0' quantizes its input activations.*a_bits=None"):
        export_compressed_tensors(model, tmp_path / "ct")
    conv = nn.Sequential(nn.Conv2d(3, 8, 3))
    quantize_model(conv, {"0": 4})
    with pytest.raises(ValueError, match=r"layer '0' is a packed Conv2d"):
        export_compressed_tensors(conv, tmp_path / "ct2")
    assert not (tmp_path / "ct").exists() and not (tmp_path / "ct2").exists()


def test_fused_projection_groups_tie_qkv_and_gate_up_in_the_allocation():
    from infoq_hf import Budget, allocate, search
    from infoq_hf.export import fused_projection_groups

    model = tiny_llama()
    groups = fused_projection_groups(model)
    assert groups == [
        ("model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj"),
        ("model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.v_proj"),
        ("model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"),
        ("model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"),
    ]
    table = search(
        model, None, bits=[2, 3, 4, 8], method="weight_mse", group_size=32, skip_modules=["lm_head"], progress=False
    )
    free = allocate(table, Budget(avg_bits=3.5))
    assert any(len({free[n].w_bits for n in group}) > 1 for group in groups)  # untied, the widths differ here
    tied = allocate(table, Budget(avg_bits=3.5), tie=fused_projection_groups(table.layers))
    for group in groups:
        assert len({tied[n].w_bits for n in group}) == 1, group
