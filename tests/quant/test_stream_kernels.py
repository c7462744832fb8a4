"""The compiled float32 CPU kernels on the packed bit stream against the pure-PyTorch reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from infoq_hf.quant import QuantLinear, stream_kernels
from infoq_hf.quant.modules import QuantConv2d
from infoq_hf.quant.quantizer import dequantize_codes

U_F32 = 2.0**-24

pytestmark = pytest.mark.skipif(stream_kernels.load() is None, reason="no C++ toolchain to build the kernels")


def _layer(bits, group_size, symmetric, out=48, fan_in=192, seed=0):
    torch.manual_seed(seed)
    return QuantLinear.from_float(nn.Linear(fan_in, out), w_bits=bits, group_size=group_size, symmetric=symmetric)


def _reference(layer, x):
    """x @ W^T + b in float64 from the pure-PyTorch dequantization, and what float32 sums may cost."""
    w = dequantize_codes(layer.codes(), layer.weight_scale, layer.weight_zero_point, layer.scheme).double()
    y = x.double() @ w.t() + layer.bias.double()
    # each output sums K products (and per group the zero-point term): a float32 error of K u per product
    bound = 2 * (w.shape[1] + 8) * U_F32 * (x.double().abs() @ w.abs().t() + layer.bias.double().abs()) + 1e-30
    return y, bound


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("group_size", [None, 32, 64])
@pytest.mark.parametrize("symmetric", [False, True])
def test_dequantize_is_bit_identical(bits, group_size, symmetric):
    layer = _layer(bits, group_size, symmetric)
    python = dequantize_codes(layer.codes(), layer.weight_scale, layer.weight_zero_point, layer.scheme)
    assert torch.equal(layer.dequantized_weight(), python)


def test_conv_dequantize_is_bit_identical():
    torch.manual_seed(1)
    conv = QuantConv2d.from_float(nn.Conv2d(8, 16, 3), w_bits=3, group_size=None)  # rows of 72 codes
    python = dequantize_codes(conv.codes(), conv.weight_scale, conv.weight_zero_point, conv.scheme)
    assert torch.equal(conv.dequantized_weight(), python.reshape(conv.weight_shape))


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("group_size", [None, 64])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("rows", [1, 3, stream_kernels.LINEAR_MAX_ROWS])
def test_float32_forward_matches_the_exact_product(bits, group_size, symmetric, rows, monkeypatch):
    layer = _layer(bits, group_size, symmetric, seed=bits)
    calls = []
    kernel = stream_kernels.linear
    monkeypatch.setattr(stream_kernels, "linear", lambda *a: calls.append(1) or kernel(*a))
    x = torch.randn(rows, 192)
    y = layer(x)
    assert len(calls) == (1 if rows < stream_kernels.LINEAR_MAX_ROWS else 0)  # many rows: dequantize + matmul
    expected, bound = _reference(layer, x)
    assert y.dtype == torch.float32
    assert ((y.double() - expected).abs() <= bound).all()


def test_three_dimensional_inputs_and_awkward_widths():
    layer = _layer(4, 64, False)
    x = torch.randn(2, 3, 192)
    expected, bound = _reference(layer, x.reshape(6, 192))
    assert ((layer(x).reshape(6, -1).double() - expected).abs() <= bound).all()
    odd = _layer(4, None, False, fan_in=100)  # rows of 100 codes do not start on a byte: the exact path
    assert not stream_kernels.applies(odd.weight_packed, odd.weight_shape, 100)
    expected, bound = _reference(odd, torch.ones(1, 100))
    assert ((odd(torch.ones(1, 100)).double() - expected).abs() <= bound).all()


def test_a_layer_holding_only_its_int4_layout_takes_the_exact_path():
    layer = _layer(4, 64, True, out=64, fan_in=256)
    x = torch.randn(1, 256)
    layer(x.bfloat16())  # builds the int4 layout, which replaces the bit stream
    assert layer.holds_kernel_layout_only
    expected, bound = _reference(layer, x)
    assert ((layer(x).double() - expected).abs() <= bound).all()


def test_a_failed_build_warns_once_and_keeps_the_exact_path(monkeypatch):
    import torch.utils.cpp_extension as cpp

    monkeypatch.setattr(stream_kernels, "_module", None)
    monkeypatch.setattr(stream_kernels, "_failure", None)

    def no_compiler(*args, **kwargs):
        raise RuntimeError("Error building extension\ng++: command not found")

    monkeypatch.setattr(cpp, "load_inline", no_compiler)
    layer = _layer(4, 64, False)
    x = torch.randn(1, 192)
    with pytest.warns(RuntimeWarning, match="could not be built.*command not found"):
        y = layer(x)
    expected, bound = _reference(layer, x)
    assert ((y.double() - expected).abs() <= bound).all()
    assert stream_kernels.load() is None  # decided once per process


def test_the_environment_switch_turns_the_kernels_off(monkeypatch):
    monkeypatch.setattr(stream_kernels, "_module", None)
    monkeypatch.setattr(stream_kernels, "_failure", None)
    monkeypatch.setenv(stream_kernels.DISABLE_ENV, "0")
    assert stream_kernels.load() is None
    layer = _layer(3, 64, False)
    assert not stream_kernels.applies(layer.weight_packed, layer.weight_shape, 64)


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("n, k, group_size", [(16, 64, None), (64, 128, 64), (80, 256, 32), (192, 128, 128)])
def test_the_bf16_rebuild_of_the_int4_layout_is_bit_identical(bits, n, k, group_size):
    """Prefill's dense weight in bfloat16, compiled, against the pure-PyTorch rebuild: full 64-row blocks,
    a last block of 16 rows, every kernel group, split layouts (5-8 bits) and wide scales."""
    from infoq_hf.quant.kernels import _dense_weight_torch, build_int4_layout, dense_weight_from_int4_layout

    gen = torch.Generator().manual_seed(bits * n + k)
    groups = 1 if group_size is None else k // group_size
    codes = torch.randint(0, 1 << bits, (n, k), dtype=torch.uint8, generator=gen)
    scale = torch.rand(n, groups, generator=gen) * 10.0 ** torch.randint(-4, 2, (n, 1), generator=gen)
    zero = torch.randint(0, 1 << bits, (n, groups), dtype=torch.uint8, generator=gen)
    layout = build_int4_layout(codes, scale, zero, bits, group_size, torch.bfloat16)
    rebuilt = stream_kernels.dequantize_int4_layout_bf16(layout.packed, layout.scale_zero, layout.kernel_group, n)
    if layout.split:
        rebuilt = rebuilt[:, :k] + rebuilt[:, k:]
    expected = _dense_weight_torch(layout)
    assert rebuilt.dtype == torch.bfloat16 and torch.equal(rebuilt.view(torch.int16), expected.view(torch.int16))
    assert torch.equal(dense_weight_from_int4_layout(layout).view(torch.int16), expected.view(torch.int16))
