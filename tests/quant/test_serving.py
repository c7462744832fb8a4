"""The fast packed forward (torch's int4 CPU kernel behind QuantLinear) against the exact reference path."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import LlamaForCausalLM

from infoq_hf import quantization_result, quantize_model
from infoq_hf.quant import QuantLinear, packed_layers, quantizable_layers
from infoq_hf.quant.kernels import (
    DENSE_FROM_ROWS,
    KERNEL_GROUPS,
    _nibbles_by_blocks,
    _nibbles_by_order,
    dense_weight_from_int4_layout,
    int4_kernel_mm,
)
from infoq_hf.quant.packing import unpack
from tests.helpers.models import tiny_llama, tiny_llama_config, tiny_packed_llama

U_BF16 = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits)


def _layer(bits, group_size, symmetric, out=64, fan_in=256, seed=0):
    torch.manual_seed(seed)
    return QuantLinear.from_float(nn.Linear(fan_in, out), w_bits=bits, group_size=group_size, symmetric=symmetric)


def _kernel_error_bound(layer, x, w):
    """What rounding to bf16 inside the kernel can cost, per output. Within one kernel group g the scale is
    s (1 + e1) and the residual zero Z (1 + e2) with |e1|, |e2| <= u, u = 2^-8, so the weight there is
    w (1 + e1) + Z (e2 - e1): the error is e1 * sum_g x w + (e2 - e1) Z sum_g x, and the output is
    rounded (u |x W^T|), then the bias is rounded to bf16 and added in bf16 (u |b| + u |y|); accumulation
    is float32 (1e-5 covers it here)."""
    layout = layer._kernel_cache[1]
    zero = layout.scale_zero[..., 1].float().t()  # [out, groups]
    if layout.split:  # the hi half carries no zero term
        zero = zero[:, zero.shape[1] // 2 :]
    g = layout.kernel_group
    xg = x.float().reshape(*x.shape[:-1], -1, g)  # [..., groups, g]
    wg = w.reshape(w.shape[0], -1, g)  # [out, groups, g]
    partial = torch.einsum("...gk,ngk->...ng", xg, wg)
    sums = xg.sum(-1)  # [..., groups]
    product, bias = F.linear(x.float(), w), layer.bias.detach()
    return (
        U_BF16 * partial.abs().sum(-1)
        + 2 * U_BF16 * (sums.abs() @ zero.abs().t())
        + U_BF16 * (product.abs() + bias.abs() + (product + bias).abs())
        + 1e-5
    )


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("group_size", [None, 64])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("lead", [(1,), (3, 17)], ids=["decode", "few rows"])
def test_int4_kernel_matches_the_dequantized_weight(bits, group_size, symmetric, lead):
    layer = _layer(bits, group_size, symmetric)
    x = torch.randn(*lead, 256, generator=torch.Generator().manual_seed(1)).bfloat16()
    with torch.no_grad():
        y = layer(x)
        assert layer.kernel_layout(x) is not None and y.dtype == torch.bfloat16
        w = layer.dequantized_weight()
        err = (y.float() - F.linear(x.float(), w, layer.bias)).abs()
        bound = _kernel_error_bound(layer, x, w)
        assert (err <= bound).all(), float((err - bound).max())
        # The bound is tight enough to catch one code step of error in any single group of a row.
        step = layer.weight_scale.repeat_interleave(256 // layer.weight_scale.shape[1], dim=1)[:, :64]
        one_step = x.float()[..., :64].abs() @ step.t()
        assert (bound < one_step).float().mean() > 0.9


@pytest.mark.parametrize("requested,fan_in", [(128, 192), (256, 320)])
def test_a_group_size_the_layer_reduced_takes_the_kernel_with_the_reduced_groups(requested, fan_in):
    # 192 and 320 are not multiples of the request: the codes are grouped by 64 (see effective_group_size),
    # and the kernel must repack them by those groups, not by the requested size
    layer = _layer(4, requested, False, fan_in=fan_in)
    assert layer.weight_scale.shape[1] == fan_in // 64 and layer.kernel_fallback_reason is None
    x = torch.randn(3, fan_in, generator=torch.Generator().manual_seed(1)).bfloat16()
    with torch.no_grad():
        y = layer(x)
        assert layer.kernel_layout(x) is not None
        w = layer.dequantized_weight()
        err = (y.float() - F.linear(x.float(), w, layer.bias)).abs()
        assert (err <= _kernel_error_bound(layer, x, w)).all()


@pytest.mark.parametrize("bits", [2, 3, 5, 6])
def test_widths_that_fit_the_container_need_no_residual_zero(bits):
    """For widths 2, 3, 5, 6 every code difference c - o fits the container around the kernel's centre,
    so the zero term is exactly 0 and only the bf16 scale rounding remains."""
    layer = _layer(bits, 64, symmetric=False)
    layer(torch.randn(1, 256).bfloat16())
    assert torch.count_nonzero(layer._kernel_cache[1].scale_zero[..., 1]) == 0


@pytest.mark.parametrize("bits, group_size", [(2, None), (4, 32), (5, None), (7, 32), (8, None)])
def test_repacking_is_exact_against_an_identity_probe(bits, group_size):
    """With unit scales and no zero term the kernel returns the integers it holds (v - 8, or v - 136 when
    split); probing with the identity and adding back the shift (zero / s) recovers c - o exactly for every
    entry: integers below 2^8 are exact in bf16, so the repacking loses nothing."""
    layer = _layer(bits, group_size, symmetric=False, out=32, fan_in=64)
    codes = unpack(layer.weight_packed, bits, 32 * 64).reshape(32, 64).float()  # before the layout replaces it
    eye = torch.eye(64, dtype=torch.bfloat16)
    layout = layer.kernel_layout(eye)
    half = layout.scale_zero.shape[0] // 2 if layout.split else 0
    unit = torch.zeros_like(layout.scale_zero)
    unit[..., 0] = 1
    unit[:half, :, 0] = 16  # the hi half of a split layout weighs 16
    probe = int4_kernel_mm(eye, dataclasses.replace(layout, scale_zero=unit)).float()  # [K, N]
    lo = layout.scale_zero[half:].float()
    shift = (lo[..., 1] / lo[..., 0]).round().t().repeat_interleave(layout.kernel_group, dim=1)  # [N, K]
    assert torch.equal(
        probe.t() + shift,
        codes - layer.weight_zero_point.float().repeat_interleave(64 if group_size is None else group_size, dim=1),
    )


@pytest.mark.parametrize("n, k", [(16, 32), (48, 64), (64, 64), (80, 96), (192, 32)])
def test_the_layout_is_read_back_by_reshapes_as_by_the_kernels_own_permutation(n, k):
    """`_nibbles_by_blocks` (reshapes, for the block structure of today's torch) against the permutation
    read off the kernel itself, on full 64-row blocks and on a last block of 16 to 48 rows; centered
    (nibble - 8, the dense path's form) as well."""
    q = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=torch.Generator().manual_seed(n + k))
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
    assert torch.equal(_nibbles_by_order(packed, n, k), q.to(torch.uint8))
    assert torch.equal(_nibbles_by_blocks(packed, n, k), q.to(torch.uint8))
    assert torch.equal(_nibbles_by_blocks(packed, n, k, centered=True), (q - 8).to(torch.int8))


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("group_size, symmetric", [(None, False), (64, True), (32, False)])
def test_many_rows_take_a_dense_matmul_of_the_layouts_weight(bits, group_size, symmetric):
    """Prefill-sized inputs multiply by the layout's weight rebuilt in bf16. Each weight is
    (q - 8) s + Z computed in bf16 from the bf16 scale and zero: three roundings, so within
    3u (|w| + |Z|) of the exact weight (4u and the hi half's magnitude 16 s |h - 8| when split, which
    adds one more sum); for widths up to 4 that is well under one code step."""
    layer = _layer(bits, group_size, symmetric)
    x = torch.randn(2, DENSE_FROM_ROWS, 256, generator=torch.Generator().manual_seed(1)).bfloat16()
    with torch.no_grad():
        y = layer(x)
        layout = layer.kernel_layout(x)
        dense = dense_weight_from_int4_layout(layout)
        assert torch.equal(y, F.linear(x, dense) + layer.bias.bfloat16())
        w = layer.dequantized_weight()
    lo = layout.scale_zero[layout.scale_zero.shape[0] // 2 :] if layout.split else layout.scale_zero
    s, zero = (lo[..., i].float().t().repeat_interleave(layout.kernel_group, dim=1) for i in (0, 1))
    bound = 3 * U_BF16 * (w.abs() + zero.abs())
    if layout.split:
        bound = 4 * U_BF16 * (w.abs() + zero.abs() + 128 * s)
    err = (dense.float() - w).abs()
    assert (err <= bound).all(), float((err - bound).max())
    if bits <= 4:
        assert (bound < s / 2).all()


def test_float32_inputs_do_not_take_the_int4_kernel():
    layer = _layer(4, 64, symmetric=False)
    x = torch.randn(2, 256)
    assert layer.kernel_layout(x) is None  # the float32 kernels of `stream_kernels` are tested on their own


@pytest.mark.parametrize(
    "out, fan_in, group_size, reason",
    [
        (24, 256, None, "not a multiple of 16"),
        (32, 256, 16, "none of the kernel group sizes"),
        (32, 48, None, "none of the kernel group sizes"),
    ],
)
def test_shapes_the_kernel_cannot_take_fall_back_to_the_exact_path(out, fan_in, group_size, reason):
    layer = _layer(4, group_size, symmetric=False, out=out, fan_in=fan_in)
    assert reason in layer.kernel_fallback_reason
    x = torch.randn(3, fan_in).bfloat16()
    assert layer.kernel_layout(x) is None
    assert torch.equal(layer(x), F.linear(x, layer.dequantized_weight(torch.bfloat16), layer.bias.bfloat16()))


def test_kernel_groups_cover_our_group_sizes():
    """A per-channel row, or one of our groups, is split into the largest kernel group dividing it."""
    from infoq_hf.quant.kernels import kernel_group_for

    assert kernel_group_for(576, None) == 64 and kernel_group_for(1536, None) == 256
    assert kernel_group_for(1024, 512) == 256 and kernel_group_for(576, 96) == 32
    assert kernel_group_for(576, 576) == 64 and kernel_group_for(100, None) is None
    assert set(KERNEL_GROUPS) == {32, 64, 128, 256}


def test_layout_follows_the_packed_buffers_and_is_never_saved(tmp_path):
    """load_state_dict / set_weight rebuild the kernel copy; the state dict (and so the checkpoint) holds
    only the packed format, bit-identical after a save and reload."""
    from safetensors.torch import load_file, save_file

    a, b = _layer(3, 64, False, seed=0), _layer(3, 64, False, seed=1)
    x = torch.randn(2, 256).bfloat16()
    before = b(x)
    assert not torch.equal(before, a(x))
    b.load_state_dict(a.state_dict())
    assert torch.equal(b(x), a(x))
    state = a.state_dict()
    assert set(state) == {"weight_packed", "weight_scale", "weight_zero_point", "bias"}
    save_file(state, tmp_path / "a.safetensors")
    reloaded = load_file(tmp_path / "a.safetensors")
    assert all(torch.equal(reloaded[k], state[k]) and reloaded[k].dtype == state[k].dtype for k in state)
    torch.manual_seed(5)
    b.set_weight(torch.randn(64, 256))  # new buffers: the next forward must not reuse the old layout
    with torch.no_grad():
        y, w = b(x), b.dequantized_weight()
        assert ((y.float() - F.linear(x.float(), w, b.bias)).abs() <= _kernel_error_bound(b, x, w)).all()


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("group_size, symmetric", [(None, False), (64, True), (32, False)])
def test_the_kernel_layout_replaces_the_stream_and_gives_back_the_exact_codes(bits, group_size, symmetric):
    """After a bf16 forward the layer holds the layout alone (the stream is a meta tensor); the state dict,
    the dequantized weight and the float32 forward are exactly those of before (a float32 forward
    restores the stream its kernel reads)."""
    from infoq_hf.quant.kernels import codes_from_int4_layout

    layer = _layer(bits, group_size, symmetric)
    stream, state = layer.weight_packed.clone(), {k: v.clone() for k, v in layer.state_dict().items()}
    x = torch.randn(3, 256)
    with torch.no_grad():
        exact, w = layer(x), layer.dequantized_weight()
        layer(x.bfloat16())
        assert layer.holds_kernel_layout_only and layer.weight_packed.is_meta
        assert torch.equal(
            codes_from_int4_layout(layer._kernel_cache[1]), unpack(stream, bits, 64 * 256).reshape(64, 256)
        )
        after = layer.state_dict()
        assert set(after) == set(state) and all(
            torch.equal(after[k], state[k]) and after[k].dtype == state[k].dtype for k in state
        )
        assert torch.equal(layer.dequantized_weight(), w) and torch.equal(layer(x), exact)
        layer(x.half())  # another kernel dtype: rebuilt from the layout it replaces, still exact
        assert layer._kernel_cache[1].dtype == torch.float16 and torch.equal(
            layer.state_dict()["weight_packed"], stream
        )
    # The layout holds the codes once: codes at 4 bits (or two 4-bit halves above 4), bf16 scale and zero and an
    # offset per kernel group (int8, int16 when split); the float32 scales (and zero points) stay.
    n_groups = layer._kernel_cache[1].code_offset.numel()
    container, halves = 64 * 256 * (8 if bits > 4 else 4) // 8, 2 if bits > 4 else 1
    assert layer._kernel_cache[1].nbytes == container + n_groups * halves * 4 + n_groups * halves


def test_a_layer_holding_only_its_layout_moves_loads_and_saves_whole(tmp_path):
    from safetensors.torch import load_file, save_file

    a, b = _layer(5, 64, False, seed=0), _layer(5, 64, False, seed=1)
    x = torch.randn(2, 256).bfloat16()
    stream_a = a.weight_packed.clone()
    with torch.no_grad():
        y_a, y_b = a(x), b(x)
        assert a.holds_kernel_layout_only and b.holds_kernel_layout_only
        b.load_state_dict(a.state_dict())  # into a layer without its stream: restored, then overwritten
        assert torch.equal(b.weight_packed, stream_a) and torch.equal(b(x), y_a) and not torch.equal(y_a, y_b)
        a.to(torch.float16)  # a cast restores the stream (casts act on the format); the scales stay float32
        assert not a.holds_kernel_layout_only and torch.equal(a.weight_packed, stream_a)
        assert a.weight_scale.dtype == torch.float32
    save_file(b.state_dict(), tmp_path / "b.safetensors")
    assert torch.equal(load_file(tmp_path / "b.safetensors")["weight_packed"], stream_a)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_export_of_a_packed_llama_matches_eager(dtype):
    model = tiny_packed_llama().to(dtype)
    assert {m.w_bits for m in packed_layers(model).values()} == set(range(2, 9))
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        eager = model(
            input_ids=ids, use_cache=False
        ).logits  # an eager forward builds the kernel layouts export then sees
        exported = torch.export.export(model, (), {"input_ids": ids, "use_cache": False}, strict=False)
        out = exported.module()(input_ids=ids, use_cache=False).logits
    assert torch.equal(out, eager)
    kernel_calls = sum(n.target is torch.ops.aten._weight_int4pack_mm_for_cpu.default for n in exported.graph.nodes)
    assert kernel_calls == (len(packed_layers(model)) if dtype == torch.bfloat16 else 0)


# ----------------------------------------------------------------------------- compact float leftovers
def test_casting_a_packed_model_casts_the_leftovers_and_keeps_the_format():
    """`model.to(torch.bfloat16)` casts embeddings, norms and biases; the packed codes and float32 scales
    are untouched (cast and back would round them), so the checkpoint format holds."""
    model = tiny_packed_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.to(torch.bfloat16)
    for name, layer in packed_layers(model).items():
        assert layer.weight_scale.dtype == torch.float32
        assert torch.equal(layer.weight_scale, before[f"{name}.weight_scale"])
        assert torch.equal(layer.weight_packed, before[f"{name}.weight_packed"])
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert model.model.norm.weight.dtype == torch.bfloat16


def test_by_default_a_float32_transformers_model_keeps_its_leftovers_in_bf16_and_other_models_keep_theirs(tmp_path):
    from transformers import AutoModelForCausalLM

    from infoq_hf import InfoQConfig, format_summary, model_size_bytes
    from infoq_hf.pipeline import quantize_with_infoq

    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config()).save_pretrained(tmp_path / "float")
    names = [n for n in quantizable_layers(LlamaForCausalLM(tiny_llama_config())) if n != "lm_head"]
    config = InfoQConfig(policy={n: 3 for n in names}, group_size=32)
    assert config.float_dtype == "auto"
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "float", dtype=torch.float32, quantization_config=config)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16} and model.config.dtype == torch.bfloat16
    summary = quantization_result(model).summary
    assert summary["float_dtype"] == "bfloat16" and "unpacked tensors in bfloat16" in format_summary(summary)
    fp32 = AutoModelForCausalLM.from_pretrained(
        tmp_path / "float", dtype=torch.float32, quantization_config=InfoQConfig(policy=config.policy, float_dtype=None)
    )
    assert model_size_bytes(model) < model_size_bytes(fp32) and quantization_result(fp32).summary["float_dtype"] is None
    net = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    result = quantize_with_infoq(net, InfoQConfig(bits=4), progress=False)
    assert result.summary["float_dtype"] is None and net[0].bias.dtype == torch.float32


def test_float_dtype_stores_leftovers_in_bf16_and_the_accounting_is_exact(tmp_path):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from infoq_hf import InfoQConfig, expected_size_bytes, model_size_bytes
    from infoq_hf.checkpoint import GUARD, IMPORT_HINT_KEY

    torch.manual_seed(0)
    cfg = tiny_llama_config(tie_word_embeddings=False)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "float")
    names = [n for n in quantizable_layers(LlamaForCausalLM(cfg)) if n != "lm_head"]
    config = InfoQConfig(policy={n: 2 + i % 7 for i, n in enumerate(names)}, group_size=32, float_dtype="bfloat16")
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "float", quantization_config=config).eval()
    assert model.lm_head.weight.dtype == torch.bfloat16 and model.model.norm.weight.dtype == torch.bfloat16
    model.save_pretrained(tmp_path / "q")
    stored = 0
    guards = {f"{n}.{GUARD}" for n in packed_layers(model)} | {IMPORT_HINT_KEY}  # the one-byte format guards
    with safe_open(str(tmp_path / "q" / "model.safetensors"), framework="pt") as f:
        for key in f.keys():
            if key in guards:
                continue
            t = f.get_tensor(key)
            stored += t.numel() * t.element_size()
            if key.endswith(("weight_scale",)):
                assert t.dtype == torch.float32
            elif t.is_floating_point():
                assert t.dtype == torch.bfloat16, key
    assert (
        stored
        == model_size_bytes(model)
        == expected_size_bytes(model)
        == quantization_result(model).summary["size_bytes"]
    )
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "q").eval()
    assert reloaded.model.embed_tokens.weight.dtype == torch.bfloat16
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)
    with pytest.raises(ValueError, match="float_dtype must be one of"):
        InfoQConfig(policy={"x": 4}, float_dtype="bf16")


def test_onnx_export_of_a_packed_llama_matches_eager():
    """The exact (float32) path exports to ONNX: under export the codes are unpacked by integer
    arithmetic (ONNX has no operator for torch's shifts); the graph stores the packed bytes."""
    onnx_reference = pytest.importorskip("onnx.reference")
    model = tiny_llama(vocab=64, layers=1)
    names = [n for n in quantizable_layers(model) if n != "lm_head"]
    model = quantize_model(model, dict(zip(names, range(2, 9))), group_size=32).eval()
    assert sorted(m.w_bits for m in packed_layers(model).values()) == list(range(2, 9))

    class Logits(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids):
            return self.m(input_ids=ids, use_cache=False).logits

    ids = torch.randint(0, 64, (1, 8), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        eager = Logits(model)(ids)
        # optimize=False: the exporter's constant folding would widen the packed bytes to int32 tensors
        program = torch.onnx.export(Logits(model).eval(), (ids,), dynamo=True, verbose=False, optimize=False)
    session = onnx_reference.ReferenceEvaluator(program.model_proto)
    out = torch.from_numpy(session.run(None, {session.input_names[0]: ids.numpy()})[0])
    assert (out - eager).abs().max() < 1e-5
    stored = {t.name: tuple(t.dims) for t in program.model_proto.graph.initializer if t.data_type == 2}  # uint8
    for name, layer in packed_layers(model).items():  # the weights stay packed in the ONNX file
        assert stored[f"m.{name}.weight_packed"] == tuple(layer.weight_packed.shape), name
