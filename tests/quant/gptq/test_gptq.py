"""GPTQ rounding against ground truth: closed forms, RTN where GPTQ must equal it, a hand-rolled
sequential reference, bit-identical reloads. Tiny layers and models, CPU, seconds."""

import copy

import pytest
import torch
import torch.nn as nn

from infoq_hf import InfoQConfig, quantizable_layers, quantize_model
from infoq_hf.quant import QuantConv2d, QuantLinear, WeightScheme, quantize_weight
from infoq_hf.quant.gptq import GPTQOptions, HessianAccumulator, gptq_quantize, gptq_quantize_model

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM  # noqa: E402

from tests.helpers.models import tiny_gpt2, tiny_llama  # noqa: E402

SCHEMES = [(None, False), (None, True), (32, False), (32, True)]  # (group_size, symmetric)


def correlated_inputs(n=1024, d=128, strength=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(d) + strength * torch.randn(d, d, generator=g) / d**0.5
    return torch.randn(n, d, generator=g) @ mix


def hessian_of(x):
    x = x.double()
    return 2 * x.T @ x / x.shape[0]


def out_err(x, w, q):
    return float((x @ (w - q).T).norm())


@pytest.fixture(scope="module")
def layer_data():
    x = correlated_inputs()
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(1))
    return x, w, hessian_of(x)


@pytest.mark.parametrize("group_size,symmetric", SCHEMES)
@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_output_error_below_rtn_at_every_width(layer_data, group_size, symmetric, act_order):
    x, w, h = layer_data
    ratios = []
    for bits in range(2, 9):
        scheme = WeightScheme(bits, group_size, symmetric)
        g = gptq_quantize(w, h, scheme, act_order=act_order).dequantize()
        r = quantize_weight(w, scheme).dequantize()
        ratios.append(out_err(x, w, g) / out_err(x, w, r))
    assert max(ratios) < 1.0, ratios  # below RTN at every width
    assert sum(ratios) / len(ratios) < 0.8, ratios  # and by a clear margin on these inputs (measured ~0.7)


@pytest.mark.parametrize("group_size,symmetric", SCHEMES)
def test_independent_inputs_give_exactly_the_rtn_codes(group_size, symmetric):
    """A diagonal Hessian couples no columns: GPTQ has nothing to compensate and must equal RTN."""
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(2))
    h = torch.diag(torch.rand(64, generator=torch.Generator().manual_seed(3)) + 0.5).double()
    for bits in range(2, 9):
        for act_order in (False, True):
            scheme = WeightScheme(bits, group_size, symmetric)
            g, r = gptq_quantize(w, h, scheme, act_order=act_order), quantize_weight(w, scheme)
            assert torch.equal(g.codes, r.codes) and torch.equal(g.scale, r.scale)
            assert (g.zero_point is None) == symmetric and (symmetric or torch.equal(g.zero_point, r.zero_point))


@pytest.mark.parametrize("group_size,symmetric", SCHEMES)
def test_8_bits_stays_within_one_step_of_rtn(group_size, symmetric):
    """With the RTN scales (per channel, or static groups under act_order) every 8-bit code is within
    one of RTN's, so the weights are within one quantization step, while the output error is lower."""
    x = correlated_inputs(strength=0.3)
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(1))
    scheme = WeightScheme(8, group_size, symmetric)
    g = gptq_quantize(w, hessian_of(x), scheme, act_order=group_size is not None)
    r = quantize_weight(w, scheme)
    assert torch.equal(g.scale, r.scale)
    step = r.scale.repeat_interleave(128 // r.scale.shape[1], dim=1)
    assert float(((g.dequantize() - r.dequantize()).abs() / step).max()) <= 1.0 + 1e-4  # float32 rounding
    assert (g.codes.int() - r.codes.int()).abs().max() == 1  # GPTQ did move some codes
    assert out_err(x, w, g.dequantize()) < out_err(x, w, r.dequantize())


def test_act_order_keeps_groups_contiguous(layer_data):
    """Static groups: the scale groups are the original contiguous column runs, parameters from the
    original weight (the RTN ones), while the columns are rounded in a different order."""
    x, w, h = layer_data
    scheme = WeightScheme(3, 32, False)
    g, r = gptq_quantize(w, h, scheme, act_order=True), quantize_weight(w, scheme)
    assert g.scale.shape == r.scale.shape == (64, 4)
    assert torch.equal(g.scale, r.scale) and torch.equal(g.zero_point, r.zero_point)
    assert not torch.equal(g.codes, r.codes)
    plain = gptq_quantize(w, h, scheme, act_order=False).dequantize()
    assert out_err(x, w, g.dequantize()) < out_err(x, w, r.dequantize())
    assert not torch.equal(plain, g.dequantize())


def test_dead_input_channel_is_rounded_to_nearest_and_the_rest_compensated(layer_data):
    x, w, _ = layer_data
    x = x.clone()
    x[:, 5] = 0.0
    h = hessian_of(x)
    scheme = WeightScheme(3, None, False)
    g, r = gptq_quantize(w, h, scheme), quantize_weight(w, scheme)
    assert torch.equal(g.codes[:, 5], r.codes[:, 5])  # no error flows into or out of a dead channel
    assert out_err(x, w, g.dequantize()) < out_err(x, w, r.dequantize())


@pytest.mark.parametrize("act_order", [False, True])
def test_the_factor_is_the_upper_cholesky_factor_of_the_dampened_inverse(layer_data, act_order):
    from infoq_hf.quant.gptq.algorithm import _factor

    _, _, h = layer_data
    order, U, shift = _factor(h, 0.01, act_order, "fc", torch.device("cpu"))
    damped = h + torch.diag(shift)
    permuted = damped[order][:, order]
    closed_form = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(permuted)), upper=True)
    assert torch.equal(U, U.triu()) and bool((U.diagonal() > 0).all())
    assert torch.allclose(U, closed_form, rtol=0, atol=1e-12 * float(closed_form.abs().max()))
    assert torch.allclose(U.T @ U @ permuted, torch.eye(h.shape[0], dtype=torch.float64), atol=1e-10)
    assert torch.allclose(shift, torch.full_like(shift, 0.01 * float(h.diagonal().mean())))


def test_singular_hessian_after_dampening_names_the_layer():
    x = correlated_inputs(n=16, d=64)  # rank 16 < 64, no dampening
    with pytest.raises(ValueError, match=r"layer 'blocks.0.fc'.*singular even after dampening.*raise damp"):
        gptq_quantize(torch.randn(8, 64), hessian_of(x), WeightScheme(4), damp=0.0, where="blocks.0.fc")
    gptq_quantize(torch.randn(8, 64), hessian_of(x), WeightScheme(4), damp=0.01)  # dampened: fine


def test_bad_arguments_are_named():
    h = torch.eye(8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"layer 'fc': Hessian shape \(8, 8\).*input width 16"):
        gptq_quantize(torch.randn(4, 16), h, WeightScheme(4), where="fc")
    with pytest.raises(ValueError, match="layer 'fc': the calibration Hessian contains NaN"):
        gptq_quantize(torch.randn(4, 8), h * float("nan"), WeightScheme(4), where="fc")
    with pytest.raises(ValueError, match="damp must be a number"):
        GPTQOptions(damp=-1)
    with pytest.raises(ValueError, match="unknown GPTQ options"):
        GPTQOptions.from_dict({"dampening": 0.1})
    with pytest.raises(ValueError, match="rounding must be one of"):
        quantize_model(nn.Sequential(nn.Linear(8, 8)), {"0": 4}, rounding="awq")


# ----------------------------------------------------------------------------- layers


@torch.no_grad()
def test_conv2d_hessian_is_the_unfolded_closed_form():
    """For every conv (padded, strided, grouped, depthwise) the output error equals the quadratic
    form of the weight error in the accumulated Hessian: sum_o dW_o H dW_o^T * count / 2."""
    g = torch.Generator().manual_seed(4)
    for conv in (
        nn.Conv2d(4, 6, 3, padding=1),
        nn.Conv2d(4, 6, (3, 2), stride=2, padding=(1, 0), dilation=(1, 2)),
        nn.Conv2d(4, 6, 3, padding=1, groups=2),
        nn.Conv2d(4, 4, 3, padding="same", groups=4),
        nn.Conv2d(4, 6, 3, padding=1, padding_mode="reflect"),
    ):
        x = torch.randn(3, 4, 9, 8, generator=g)
        acc = HessianAccumulator("c", conv)
        acc.add(x)
        dw = torch.randn(conv.weight.shape, generator=g)
        moved = copy.deepcopy(conv)
        moved.weight.data += dw
        lhs = float(((moved(x) - conv(x)) ** 2).sum())
        h = acc.hessian()
        rhs = (
            sum(
                float(
                    torch.einsum(
                        "oi,ij,oj->", d.reshape(d.shape[0], -1).double(), hg, d.reshape(d.shape[0], -1).double()
                    )
                )
                for d, hg in zip(dw.chunk(conv.groups), h)
            )
            * acc.count
            / 2
        )
        assert abs(lhs - rhs) <= 1e-4 * lhs, (conv, lhs, rhs)


def _convnet():
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 7 * 7, 10),
    ).eval()


@torch.no_grad()
def test_conv2d_and_linear_model_gptq_beats_rtn():
    model = _convnet()
    g = torch.Generator().manual_seed(6)
    calib = [(torch.randn(16, 3, 16, 16, generator=g).cumsum(-1) / 4, None) for _ in range(4)]
    x = torch.randn(32, 3, 16, 16, generator=g).cumsum(-1) / 4
    ref = model(x)
    policy = {n: 3 for n in quantizable_layers(model)}
    rtn = quantize_model(copy.deepcopy(model), policy)
    gptq = quantize_model(copy.deepcopy(model), policy, rounding="gptq", calibration=calib)
    assert all(isinstance(gptq.get_submodule(n), (QuantConv2d, QuantLinear)) for n in policy)
    assert float((gptq(x) - ref).norm()) < 0.9 * float((rtn(x) - ref).norm())


@torch.no_grad()
def test_transformers_conv1d_equals_the_linear_path():
    """GPT-2's Conv1D stores the weight transposed: GPTQ must give the codes of the equivalent Linear."""
    gpt2 = tiny_gpt2(seed=7)
    ids = [{"input_ids": torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(i))} for i in range(3)]
    names = [n for n in quantizable_layers(gpt2) if n != "lm_head"]
    q = quantize_model(copy.deepcopy(gpt2), {n: 3 for n in names}, group_size=16, rounding="gptq", calibration=ids)
    conv1d = gpt2.transformer.h[0].mlp.c_fc
    acc = HessianAccumulator("c_fc", conv1d)
    hook = conv1d.register_forward_pre_hook(acc)
    for b in ids:  # block 0 is first: its inputs are the float model's
        gpt2(**b)
    hook.remove()
    expected = gptq_quantize(conv1d.weight.detach().t(), acc.hessian()[0], WeightScheme(3, 16))
    packed = q.get_submodule("transformer.h.0.mlp.c_fc")
    assert packed.transposed_source and torch.equal(packed.dequantized_weight(), expected.dequantize())
    test = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(9))
    ref = gpt2(test).logits
    rtn = quantize_model(copy.deepcopy(gpt2), {n: 3 for n in names}, group_size=16)
    assert float((q(test).logits - ref).norm()) < float((rtn(test).logits - ref).norm())


# ----------------------------------------------------------------------------- sequential, tiny Llama


@pytest.fixture(scope="module")
def llama():
    model = tiny_llama(vocab=256)
    g = torch.Generator().manual_seed(1)
    calib = [{"input_ids": torch.randint(0, 256, (4, 32), generator=g)} for _ in range(4)]
    calib[1]["attention_mask"] = torch.ones(4, 32, dtype=torch.long)
    calib[1]["attention_mask"][0, :5] = 0  # a padded row: the mask must be replayed
    return model, calib, [n for n in quantizable_layers(model) if n != "lm_head"]


def test_sequential_gptq_matches_a_hand_rolled_reference(llama):
    """Block k's Hessians must come from the model with blocks 0..k-1 already quantized, with the
    real attention mask and position embeddings: rebuild that by full forward passes, layer by layer."""
    model, calib, names = llama
    policy = {n: 3 for n in names}
    got = quantize_model(copy.deepcopy(model), policy, group_size=32, rounding="gptq", calibration=calib)
    ref = copy.deepcopy(model)
    for block in ("model.layers.0.", "model.layers.1."):
        in_block = [n for n in names if n.startswith(block)]
        accs = {n: HessianAccumulator(n, ref.get_submodule(n)) for n in in_block}
        hooks = [accs[n].layer.register_forward_pre_hook(accs[n]) for n in in_block]
        with torch.no_grad():
            for b in calib:
                ref(**b, use_cache=False)
        for h in hooks:
            h.remove()
        for n in in_block:
            layer = ref.get_submodule(n)
            qw = gptq_quantize(layer.weight.detach(), accs[n].hessian()[0], WeightScheme(3, 32), where=n)
            layer.weight.data.copy_(qw.dequantize())
    for n in names:
        assert torch.allclose(got.get_submodule(n).dequantized_weight(), ref.get_submodule(n).weight, atol=0, rtol=0), n


@torch.no_grad()
def test_sequential_gptq_lowers_the_final_output_error(llama):
    model, calib, names = llama
    test = torch.randint(0, 256, (4, 32), generator=torch.Generator().manual_seed(2))
    ref = model(test).logits
    for bits in (3, 4):
        policy = {n: bits for n in names}
        rtn = quantize_model(copy.deepcopy(model), policy, group_size=32)
        gptq = quantize_model(copy.deepcopy(model), policy, group_size=32, rounding="gptq", calibration=calib)
        assert float((gptq(test).logits - ref).norm()) < float((rtn(test).logits - ref).norm()), bits


def test_activation_buffer_is_one_block(llama):
    model, calib, names = llama
    report = gptq_quantize_model(
        copy.deepcopy(model), {n: 4 for n in names}, calib, scheme={"group_size": 32}, progress=False
    )
    hidden = sum(b["input_ids"].numel() for b in calib) * 64 * 4  # tokens x hidden x fp32
    assert report.layers == len(names) and report.blocks == 2 and report.full_passes == 1
    assert hidden <= report.max_activation_bytes < 2 * hidden  # hidden states + per-batch mask/rotary


def test_missing_calibration_and_nan_name_the_layer_and_leave_the_model_float(llama):
    model, calib, names = llama
    with pytest.raises(
        ValueError,
        match=r"rounding='gptq' needs calibration batches to round layer "
        r"'model.layers.0.self_attn.q_proj' \(and 13 more\)",
    ):
        quantize_model(copy.deepcopy(model), {n: 4 for n in names}, rounding="gptq")
    broken = copy.deepcopy(model)
    broken.model.layers[1].post_attention_layernorm.weight.data[3] = float("nan")
    with pytest.raises(
        ValueError, match=r"layer 'model.layers.1.mlp.(gate|up)_proj': a calibration input contains NaN"
    ):
        quantize_model(broken, {n: 4 for n in names}, rounding="gptq", calibration=calib)
    assert not any(isinstance(m, QuantLinear) for m in broken.modules())  # block 0 was put back in float


@torch.no_grad()
def test_gptq_checkpoint_reloads_bit_identically_and_records_the_rounding(llama, tmp_path):
    model, calib, names = llama
    model.save_pretrained(tmp_path / "float")
    policy = {n: {"w_bits": 2 + i % 7, "a_bits": None} for i, n in enumerate(names)}
    config = InfoQConfig(
        policy=policy, group_size=32, rounding="gptq", calibration=calib, gptq_options={"act_order": True}
    )
    q = AutoModelForCausalLM.from_pretrained(tmp_path / "float", quantization_config=config)
    q.save_pretrained(tmp_path / "q")
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    stored = back.config.quantization_config
    stored = stored if isinstance(stored, dict) else stored.to_dict()
    assert stored["rounding"] == "gptq" and stored["gptq_options"] == {"act_order": True}
    for n in names:
        a, b = q.get_submodule(n), back.get_submodule(n)
        assert torch.equal(a.codes(), b.codes()) and torch.equal(a.weight_scale, b.weight_scale)
    test = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(3))
    assert torch.equal(q(test).logits, back(test).logits)
    rtn = quantize_model(copy.deepcopy(model), policy, group_size=32)
    assert any(not torch.equal(rtn.get_submodule(n).codes(), q.get_submodule(n).codes()) for n in names)


def test_configs_without_rounding_read_as_rtn_and_bad_values_are_refused():
    d = InfoQConfig(policy={"fc": 4}, rounding="gptq").to_dict()
    assert d["rounding"] == "gptq"
    del d["rounding"], d["gptq_options"]
    assert InfoQConfig.from_dict(d).rounding == "rtn"
    with pytest.raises(ValueError, match="InfoQConfig.rounding must be one of"):
        InfoQConfig(policy={"fc": 4}, rounding="GPTQ")
    with pytest.raises(ValueError, match="block_size must be a positive int"):
        InfoQConfig(policy={"fc": 4}, rounding="gptq", gptq_options={"block_size": 0})


def test_auto_rounding_is_gptq_for_a_causal_lm_with_enough_calibration_tokens():
    from infoq_hf.pipeline import GPTQ_MIN_TOKENS, resolve_rounding
    from tests.helpers.models import tiny_llama

    model = tiny_llama()
    config = InfoQConfig(policy={"re:.*proj": 4})
    assert config.rounding == "auto"
    enough = [{"input_ids": torch.zeros(4, GPTQ_MIN_TOKENS // 4, dtype=torch.long)}]
    few = [{"input_ids": torch.zeros(1, GPTQ_MIN_TOKENS - 1, dtype=torch.long)}]
    assert resolve_rounding(config, model, enough) == "gptq"
    assert resolve_rounding(config, model, few) == "rtn"
    assert resolve_rounding(config, model, None) == "rtn"  # no calibration data
    assert resolve_rounding(config, torch.nn.Sequential(torch.nn.Linear(4, 4)), enough) == "rtn"  # not a causal LM
    assert resolve_rounding(InfoQConfig(policy={"x": 4}, rounding="gptq"), model, None) == "gptq"
