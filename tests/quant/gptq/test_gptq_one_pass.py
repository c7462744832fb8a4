"""One-pass GPTQ candidates against the per-width code they replace (`gptq_reference.py`, the code as
it was): every width's codes, scales and zero points bit-identical, and the error ratios within 1e-5
(the library's error products are float32, the reference's float64), on single weights
(act_order, groups that do not divide, clip search, symmetric, small lazy blocks), a tiny Llama on
float and on prefix inputs, GPT-2's Conv1D and a conv net; and the compact store's size in closed form."""

import copy
import itertools
import math

import pytest
import torch
import torch.nn as nn

import tests.helpers.gptq_reference as reference
from infoq_hf import quantizable_layers
from infoq_hf.quant import WeightScheme
from infoq_hf.quant.gptq import GPTQCandidates, PackedCandidate, gptq_candidates, gptq_quantize, gptq_quantize_widths
from infoq_hf.quant.gptq.algorithm import gptq_quantize_widths_with_errors
from infoq_hf.quant.scheme import PackingScheme
from tests.helpers.models import lm_batches, tiny_gpt2, tiny_llama

BITS = (2, 3, 4, 8)


def same_rounding(a, b) -> bool:
    zeros = (a.zero_point is None and b.zero_point is None) or (
        a.zero_point is not None and b.zero_point is not None and torch.equal(a.zero_point, b.zero_point)
    )
    return (
        torch.equal(a.codes, b.codes)
        and torch.equal(a.scale, b.scale)
        and zeros
        and a.scheme == b.scheme
        and tuple(a.shape) == tuple(b.shape)
    )


def correlated(n, d, g):
    return torch.randn(n, d, generator=g) @ (torch.eye(d) + torch.randn(d, d, generator=g) / d**0.5)


# group sizes: dividing (32), falling back to 32 (96 wide: 64 -> 32), none fitting (7: per channel), per channel
@pytest.mark.parametrize("cols,group_size", [(96, 32), (96, 64), (96, 7), (80, None), (80, 48)])
@pytest.mark.parametrize("act_order", [False, True])
def test_every_width_is_bit_identical_to_its_own_sweep(cols, group_size, act_order):
    g = torch.Generator().manual_seed(cols + (group_size or 0))
    x = correlated(512, cols, g)
    h = 2 * x.T.double() @ x.double() / x.shape[0]
    h[5, :] = h[:, 5] = 0.0  # a dead input channel
    w = torch.randn(24, cols, generator=g)
    for symmetric, clip, block in itertools.product((False, True), (False, True), (128, 20)):
        schemes = [WeightScheme(b, group_size, symmetric, clip) for b in BITS]
        got = gptq_quantize_widths(w, h, schemes, act_order=act_order, block_size=block, where="fc")
        for scheme, qw in zip(schemes, got):
            old = reference.gptq_quantize(w, h, scheme, act_order=act_order, block_size=block, where="fc")
            assert same_rounding(qw, old), (scheme, block)
            assert same_rounding(gptq_quantize(w, h, scheme, act_order=act_order, block_size=block), old)
    mixed = [WeightScheme(3, 32), WeightScheme(4, None), WeightScheme(2, 32, True)]  # different sweeps in one call
    for scheme, qw in zip(mixed, gptq_quantize_widths(w, h, mixed, act_order=act_order)):
        assert same_rounding(qw, reference.gptq_quantize(w, h, scheme, act_order=act_order))


@pytest.mark.parametrize("group_size,act_order,block", [(32, False, 128), (None, True, 20), (48, False, 20)])
def test_the_sweeps_error_is_the_output_error_on_the_hessian(group_size, act_order, block):
    """tr(D H D^T) read off the sweep (||E||^2 less the dampening's share) equals the product, in float64,
    with a dead input channel (its dampening is 1 + damp * mean) and the widths swept together."""
    g = torch.Generator().manual_seed(7)
    x = correlated(400, 96, g)
    h = 2 * x.T.double() @ x.double() / x.shape[0]
    h[3, :] = h[:, 3] = 0.0
    w = torch.randn(20, 96, generator=g)
    schemes = [WeightScheme(b, group_size) for b in BITS]
    got = gptq_quantize_widths_with_errors(w, h, schemes, act_order=act_order, block_size=block)
    for (qw, error), same in zip(got, gptq_quantize_widths(w, h, schemes, act_order=act_order, block_size=block)):
        assert same_rounding(qw, same)
        d = w.double() - qw.dequantize().double()
        assert error == pytest.approx(float(((d @ h) * d).sum()), rel=1e-9)


def same_ratios(new: dict, old: dict) -> bool:
    return new.keys() == old.keys() and all(new[n] == pytest.approx(old[n], rel=1e-5) for n in old)


def assert_same_candidates(new: GPTQCandidates, old, widths):
    assert same_ratios(new.error_ratio, old.error_ratio)
    assert new.meta["inputs"] == old.meta["inputs"]
    assert set(new.rounded) == set(old._weights)
    for (name, bits), qw in old._weights.items():
        assert same_rounding(new.quantized(name, bits), qw), (name, bits)
        assert torch.equal(new.weight(name, bits), old.weight(name, bits)), (name, bits)
    assert sum(len(w) for w in widths.values()) == len(old._weights) or not old._weights


@pytest.fixture(scope="module")
def llama():
    model = tiny_llama(vocab=96, layers=2, pad_token_id=None, max_position_embeddings=64)
    names = [n for n in quantizable_layers(model) if n != "lm_head"]
    return model, lm_batches(), names


@pytest.mark.parametrize("options", [None, {"act_order": True, "block_size": 16}])
def test_tiny_llama_candidates_equal_the_per_width_pass(llama, options):
    model, batches, names = llama
    widths = {n: BITS for n in names + ["model.embed_tokens"]}
    scheme = PackingScheme(group_size=48)  # 64 wide: falls back to 32; 128 wide (down_proj): falls back to 32
    kw = dict(scheme=scheme, options=options, progress=False)
    assert_same_candidates(
        gptq_candidates(model, widths, batches, **kw), reference.gptq_candidates(model, widths, batches, **kw), widths
    )
    prefix = {n: (3, 2, 4, 8)[i % 4] for i, n in enumerate(widths)}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    new = gptq_candidates(model, widths, batches, prefix_bits=prefix, **kw)
    old = reference.gptq_candidates(model, widths, batches, prefix_bits=prefix, **kw)
    assert_same_candidates(new, old, widths)
    ratios_only = gptq_candidates(model, widths, batches, prefix_bits=prefix, keep_weights=False, **kw)
    assert same_ratios(ratios_only.error_ratio, old.error_ratio) and not ratios_only.has_weights()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is put back


def test_gpt2_conv1d_and_a_conv_net_equal_the_per_width_pass():
    gpt2 = tiny_gpt2()
    batches = [{"input_ids": torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))}]
    widths = {n: BITS for n in quantizable_layers(gpt2) if n != "lm_head"}
    kw = dict(scheme=PackingScheme(group_size=16), progress=False)
    assert_same_candidates(
        gptq_candidates(gpt2, widths, batches, **kw), reference.gptq_candidates(gpt2, widths, batches, **kw), widths
    )

    torch.manual_seed(5)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=4),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 7 * 7, 10),
    ).eval()
    g = torch.Generator().manual_seed(6)
    calib = [(torch.randn(8, 3, 16, 16, generator=g).cumsum(-1) / 4, None) for _ in range(2)]
    widths = {n: BITS for n in quantizable_layers(net)}
    for scheme, options in (
        (PackingScheme(group_size=32, conv_group_size=8), None),
        (PackingScheme(conv_group_size=None, symmetric=True), {"act_order": True}),
    ):
        kw = dict(scheme=scheme, options=options, progress=False)
        assert_same_candidates(
            gptq_candidates(net, widths, calib, **kw), reference.gptq_candidates(net, widths, calib, **kw), widths
        )
        prefix = {n: 3 for n in widths}
        assert_same_candidates(
            gptq_candidates(net, widths, calib, prefix_bits=prefix, **kw),
            reference.gptq_candidates(net, widths, calib, prefix_bits=prefix, **kw),
            widths,
        )


def test_the_store_takes_packed_codes_plus_scales(llama):
    """Exactly ceil(n * bits / 8) bytes of codes per layer and width, plus 4 bytes of scale and 1 of zero
    point per group; the per-width store it replaces held a byte per code."""
    model, batches, names = llama
    widths = {n: BITS for n in names}
    candidates = gptq_candidates(model, widths, batches, scheme=PackingScheme(group_size=32), progress=False)
    expected, before, weights = 0, 0, 0
    for n in names:
        numel = model.get_submodule(n).weight.numel()
        weights += numel
        for b in BITS:
            groups = numel // 32
            expected += math.ceil(numel * b / 8) + 5 * groups
            before += numel + 5 * groups
    assert candidates.nbytes() == expected
    assert expected / weights == pytest.approx(sum(BITS) / 8 + 4 * 5 / 32)  # 2.75 bytes a weight, all 4 widths
    assert before / weights == pytest.approx(4 + 4 * 5 / 32)  # 4.625 before
    c = candidates.rounded[(names[0], 3)]
    assert isinstance(c, PackedCandidate) and c.packed.dtype == torch.uint8 and c.packed.device.type == "cpu"
    assert same_rounding(PackedCandidate.of(c.quantized()).quantized(), c.quantized())  # exact round trip
    copy.deepcopy(candidates)  # plain tensors: picklable, as gathering over processes needs
