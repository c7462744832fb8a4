"""The journeys a newcomer walks (issue 16), each on a tiny model built from a config (no network):
group sizes that do not divide every layer, the calibration inputs peers accept, transformers' own
save/push writing the InfoQ card, the card's content, the CLI on a folder of images, small CLI fixes.
"""

import json

import pytest
import torch

import infoq_hf
from infoq_hf import Budget, InfoQConfig, allocate, model_size_bytes, quantize_model, search
from infoq_hf.checkpoint import packed_layers
from infoq_hf.quant.quantizer import effective_group_size

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM  # noqa: E402


def _tiny_llama(hidden=576, intermediate=1024, vocab=128):
    """SmolLM2's 576-wide shape, scaled down: attention and gate/up layers take 576 inputs (128 does not
    divide it), down_proj takes `intermediate`."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=2,
                      num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=64,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).eval()


# ----------------------------------------------------------------------------- 1. group sizes
@pytest.mark.parametrize("shape, requested, expected", [
    ((8, 576), 128, 64), ((8, 704), 128, 64), ((8, 1024), 128, 128), ((8, 768), 256, 256),
    ((8, 576), 256, 64), ((8, 96), 64, 32), ((8, 100), 128, None), ((8, 40), 32, None),
    ((8, 96), 96, 96), ((8, 64), 128, 64), ((8, 3, 3, 3), 32, None), ((8, 576), None, None),
])
def test_effective_group_size_is_the_largest_fitting_size_not_above_the_request(shape, requested, expected):
    got = effective_group_size(shape, requested)
    assert got == expected
    if got is not None:  # brute force: no larger admissible size divides the width
        fan_in = torch.Size(shape[1:]).numel()
        assert fan_in % got == 0 and got <= requested
        assert not [g for g in (256, 128, 64, 32) if got < g <= requested and fan_in % g == 0]


def test_default_group_size_on_576_wide_layers_packs_and_the_accounting_matches_the_format():
    model = _tiny_llama()
    table = search(model, None, bits=(2, 3, 4, 8), method="weight_mse", group_size=128, skip_modules=["lm_head"])
    policy = allocate(table, Budget(avg_bits=3.0))
    quantize_model(model, policy, group_size=128, skip_modules=["lm_head"])
    assert policy.report.size_bytes == model_size_bytes(model)  # the table's layer_bytes == what is stored
    layers = packed_layers(model)
    assert layers["model.layers.0.self_attn.q_proj"].weight_scale.shape == (576, 576 // 64)
    assert layers["model.layers.0.mlp.down_proj"].weight_scale.shape == (576, 1024 // 128)
    assert "group=64" in repr(layers["model.layers.0.self_attn.q_proj"])


def test_quantize_on_load_with_default_group_size_reloads_identically_and_says_which_sizes(tmp_path, caplog):
    _tiny_llama().save_pretrained(tmp_path / "float")
    config = InfoQConfig(budget={"avg_bits": 3}, method="weight_mse")  # group_size defaults to 128
    with caplog.at_level("INFO", logger="infoq_hf"):
        model = AutoModelForCausalLM.from_pretrained(tmp_path / "float", quantization_config=config).eval()
    groups = {n: s["group_size"] for n, s in model.infoq_summary["layers"].items()}
    assert groups["model.layers.1.self_attn.o_proj"] == 64 and groups["model.layers.1.mlp.down_proj"] == 128
    text = infoq_hf.pipeline.format_summary(model.infoq_summary)
    assert "64 weights per scale: 12 layers" in text and "128 weights per scale: 2 layers (model.layers.*.mlp.down_proj)" in text
    model.save_pretrained(tmp_path / "q")
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "q").eval()
    ids = torch.randint(0, 128, (2, 16))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
