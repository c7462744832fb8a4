"""Reading a checkpoint folder without loading its weights (infoq_hf.checkpoint_info): the layer sizes and
size summary from the safetensors headers equal what the loaded model measures."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn as nn

import infoq_hf
from infoq_hf import BitPolicy, InfoQConfig
from infoq_hf.checkpoint import read_tensor_specs
from infoq_hf.checkpoint_info import SUMMARY_FILE, packed_layers_summary, packed_weight_numel, read_checkpoint
from infoq_hf.quant.packing import packed_nbytes
from infoq_hf.quant.quantizer import group_count


def _same(from_headers, loaded):
    """read_checkpoint's params and summary against `packed_layers_summary` of the loaded model."""
    params, measured = loaded
    info = from_headers
    assert list(info.params.items()) == list(params.items())  # the same counts, in the model's order
    for key, value in measured.items():
        assert info.summary[key] == pytest.approx(value, rel=1e-12), key


def _tiny_llama_policy():
    names = [
        f"model.layers.{i}.{part}"
        for i in range(2)
        for part in (
            "self_attn.q_proj",
            "self_attn.k_proj",
            "self_attn.v_proj",
            "self_attn.o_proj",
            "mlp.gate_proj",
            "mlp.up_proj",
            "mlp.down_proj",
        )
    ]
    return BitPolicy({n: {"w_bits": (2, 3, 4, 5, 8)[i % 5]} for i, n in enumerate(names)})


def test_transformers_counts_from_headers_equal_the_loaded_model(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=96,
        hidden_size=48,
        intermediate_size=80,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        pad_token_id=0,
        eos_token_id=2,
        bos_token_id=None,
    )
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "float")
    config = InfoQConfig(bits=[2, 3, 4, 5, 8], group_size=16, policy=_tiny_llama_policy())
    infoq_hf.save(LlamaForCausalLM.from_pretrained(tmp_path / "float", quantization_config=config), tmp_path / "q")
    saved = json.loads((tmp_path / "q" / SUMMARY_FILE).read_text())
    (tmp_path / "q" / SUMMARY_FILE).unlink()  # a folder pushed from elsewhere: only the checkpoint

    info = read_checkpoint(tmp_path / "q")
    loaded = packed_layers_summary(LlamaForCausalLM.from_pretrained(tmp_path / "q"))
    _same(info, loaded)
    assert info.params == saved["params"]  # what the save measured on the model itself
    assert list(info.policy) == list(loaded[0])  # the card lists the layers in model order


def test_timm_counts_from_headers_equal_the_loaded_model(tmp_path):
    import timm

    from infoq_hf import quantize_model
    from infoq_hf.checkpoint import policy_of
    from infoq_hf.integrations.timm import load_quantized, save_quantized
    from infoq_hf.quant.apply import quantizable_layers

    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    names = list(quantizable_layers(model))
    policy = BitPolicy({n: {"w_bits": (2, 4, 3, 6)[i % 4]} for i, n in enumerate(names)})
    quantize_model(model, policy, group_size=16, conv_group_size=8)
    save_quantized(model, tmp_path / "q", policy_of(model))
    assert not (tmp_path / "q" / SUMMARY_FILE).exists()

    info = read_checkpoint(tmp_path / "q")
    _same(info, packed_layers_summary(load_quantized(tmp_path / "q")))
    assert info.kind == "timm"


class _Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, bias=False)
        self.fc1 = nn.Linear(54, 24)
        self.fc2 = nn.Linear(24, 7)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(self.conv(x).flatten(1))))


def test_plain_module_counts_from_headers_equal_the_loaded_model(tmp_path):
    from infoq_hf import quantize_model
    from infoq_hf.integrations.timm import load_quantized, save_quantized

    torch.manual_seed(0)
    model = _Plain()
    quantize_model(model, {"conv": {"w_bits": 3}, "fc1": {"w_bits": 2}, "fc2": {"w_bits": 5}}, group_size=8)
    save_quantized(model, tmp_path / "q")

    info = read_checkpoint(tmp_path / "q")  # before the split: refused, its layer sizes were unknown
    assert info.kind == "pytorch"
    _same(info, packed_layers_summary(load_quantized(tmp_path / "q", model=_Plain())))


def test_packed_weight_numel_is_exact_from_four_output_rows():
    """Codes take ceil(n*b/8) bytes: n is fixed by the scale rows once a layer has >= 8/b of them."""
    for bits in range(2, 9):
        for out in range(1, 12):
            for fan_in in (1, 3, 5, 8, 9, 16, 27, 33):
                for group in (None, 8):
                    numel = out * fan_in
                    specs = {
                        "l.weight_packed": ((packed_nbytes(numel, bits),), "U8"),
                        "l.weight_scale": ((out, group_count((out, fan_in), group)), "F32"),
                    }
                    found = packed_weight_numel(specs, "l", bits, (group,))
                    if out >= math.ceil(8 / bits):
                        assert found == numel, (bits, out, fan_in, group)
                    else:  # too few rows: exact or None, never a wrong count
                        assert found in (numel, None), (bits, out, fan_in, group)


def test_plain_module_with_an_undecidable_layer_is_refused(tmp_path):
    from infoq_hf import quantize_model
    from infoq_hf.integrations.timm import save_quantized

    model = nn.Sequential(nn.Linear(5, 2))  # 2-bit codes of 10 or of 12 weights both take 3 bytes
    quantize_model(model, {"0": {"w_bits": 2}})
    save_quantized(model, tmp_path / "q")
    assert read_tensor_specs([tmp_path / "q" / "model.safetensors"])["0.weight_packed"][0] == (3,)
    assert read_checkpoint(tmp_path / "q").params == {"0": 10}  # the save records the layer's shape
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "q" / "model.safetensors"
    with safe_open(str(weights), framework="pt") as handle:
        meta = {k: v for k, v in handle.metadata().items() if k not in ("infoq_layers", "infoq_xxh3_128")}
    save_file(load_file(weights), weights, metadata=meta)  # as a save before shapes were recorded
    with pytest.raises(ValueError, match="push the quantized model object"):
        read_checkpoint(tmp_path / "q")
