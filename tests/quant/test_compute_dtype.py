"""`compute_dtype`: packed Linear layers computing in bf16/fp16 inside a model run in another dtype."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from transformers import AutoModelForCausalLM

from infoq_hf import InfoQConfig, set_compute_dtype
from infoq_hf.quant import QuantLinear, packed_layers
from infoq_hf.quant.kernels import DENSE_FROM_ROWS
from tests.helpers.models import tiny_llama, tiny_packed_llama


def _layer(bits=3):
    torch.manual_seed(0)
    return QuantLinear.from_float(nn.Linear(256, 64), w_bits=bits, group_size=64)


@pytest.mark.parametrize("rows", [1, 5, DENSE_FROM_ROWS + 3])  # the int4 kernel and the dense bf16 path
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_float32_input_is_computed_in_the_compute_dtype_and_cast_back(rows, dtype):
    layer = _layer()
    x = torch.randn(2, rows, 256)
    expected = layer(x.to(dtype)).float()  # the layer in that dtype, as a model loaded in it runs
    set_compute_dtype(layer, dtype)
    y = layer(x)
    assert y.dtype == torch.float32 and torch.equal(y, expected)
    assert not torch.equal(y, _layer()(x))  # not the exact float32 path
    assert torch.equal(layer(x.to(dtype)), expected.to(dtype))  # an input already in it is unchanged


def test_none_restores_the_exact_path_and_bad_names_are_refused():
    layer, x = _layer(), torch.randn(3, 256)
    set_compute_dtype(layer, "bfloat16")
    set_compute_dtype(layer, None)
    assert torch.equal(layer(x), _layer()(x))
    for bad in ("int8", "float32", torch.float64):
        with pytest.raises(ValueError, match="compute_dtype must be one of"):
            set_compute_dtype(layer, bad)
    with pytest.raises(ValueError, match="InfoQConfig.compute_dtype must be one of"):
        InfoQConfig(bits=4, compute_dtype="float64")


def test_it_reaches_every_packed_linear_and_nothing_else():
    model = tiny_packed_llama()
    set_compute_dtype(model, torch.bfloat16)
    linears = [m for m in packed_layers(model).values() if isinstance(m, QuantLinear)]
    assert linears and all(m.compute_dtype == torch.bfloat16 for m in linears)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the rest of the model is untouched
    with torch.no_grad():
        logits = model(torch.randint(0, 96, (1, 12))).logits
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()


def test_the_config_carries_it_into_the_packed_model_and_through_a_reload(tmp_path):
    float_folder = tmp_path / "float"
    tiny_llama(pad_token_id=None, max_position_embeddings=64).save_pretrained(float_folder)
    config = InfoQConfig(bits=4, float_dtype=None, compute_dtype="bfloat16")
    model = AutoModelForCausalLM.from_pretrained(float_folder, quantization_config=config).eval()
    layers = [m for m in packed_layers(model).values() if isinstance(m, QuantLinear)]
    assert layers and all(m.compute_dtype == torch.bfloat16 for m in layers)
    ids = torch.randint(0, 96, (1, 10))
    with torch.no_grad():
        before = model(ids).logits
    model.save_pretrained(tmp_path / "packed")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "packed", dtype=torch.float32).eval()
    assert reloaded.config.quantization_config.compute_dtype == "bfloat16"
    assert all(m.compute_dtype == torch.bfloat16 for m in packed_layers(reloaded).values())
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, before)
