"""LSQ fake quantization (infoq_hf.quant.lsq): its step gradient, its initialisation, training, and the
export to packed layers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from infoq_hf import BitPolicy, QuantConv2d, QuantLinear, calibrate_activation_ranges
from infoq_hf.quant import WeightScheme, fake_quantize_weight
from infoq_hf.quant.lsq import (
    LSQConv2d,
    LSQLinear,
    export_packed,
    grad_scale,
    initial_weight_step,
    lsq_quantize,
    prepare_qat,
    step_parameters,
)


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


def data(n=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g) + y.view(-1, 1, 1, 1) / 5
    return x, y


POLICY = {
    "0": {"w_bits": 3, "a_bits": None},
    "3": {"w_bits": 2, "a_bits": 4},
    "7": {"w_bits": 4, "a_bits": 3},
    "9": {"w_bits": 8, "a_bits": 8},
}


def trained_qat_model(steps=5, group_size=None):
    model = small_cnn()
    x, y = data()
    ranges = calibrate_activation_ranges(model, [(x, y)], POLICY)
    prepare_qat(model, POLICY, act_ranges=ranges, group_size=group_size)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval(), x


def test_lsq_step_gradient_matches_the_paper():
    # v_hat = round(clamp(v/s, -Qn, Qp)) * s; d v_hat / d s = -v/s + round(v/s) inside, -Qn / Qp at the clamps,
    # times LSQ's gradient scale g.
    s = torch.tensor(0.5, requires_grad=True)
    v = torch.tensor([0.3, -0.9, 5.0, -5.0], requires_grad=True)
    g = 0.25
    lsq_quantize(v, s, 4, 3, g).sum().backward()
    expected = g * sum([-0.6 + 1.0, 1.8 - 2.0, 3.0, -4.0])
    assert s.grad.item() == pytest.approx(expected, abs=1e-6)
    assert v.grad.tolist() == [1.0, 1.0, 0.0, 0.0]  # straight through inside the range, zero outside
    x = torch.tensor([2.0], requires_grad=True)
    grad_scale(x, 0.1).sum().backward()
    assert x.grad.item() == pytest.approx(0.1)


def test_minmax_init_reproduces_the_symmetric_post_training_quantizer():
    w = torch.randn(6, 4, 3, 3, generator=torch.Generator().manual_seed(0))
    layer = nn.Conv2d(4, 6, 3)
    layer.weight.data.copy_(w)
    q = LSQConv2d.from_float(layer, w_bits=3, step_init="minmax")
    ptq = fake_quantize_weight(w, WeightScheme(3, symmetric=True))
    assert torch.allclose(q.fake_quant_weight(), ptq, atol=1e-6)
    lsq = initial_weight_step(w, 3, None, "lsq")
    assert torch.allclose(lsq[:, 0], 2 * w.abs().flatten(1).mean(1) / math.sqrt(3))
    best = initial_weight_step(w, 3, None, "best")
    assert ((best == lsq) | (best == initial_weight_step(w, 3, None, "minmax"))).all()


@pytest.mark.parametrize("group_size", [None, 16])
def test_export_reproduces_the_fake_quant_forward(group_size):
    model, x = trained_qat_model(group_size=group_size)
    assert isinstance(model[0], LSQConv2d) and isinstance(model[9], LSQLinear)
    assert model[3].a_bits == 4 and model[3].input_step.grad is not None
    with torch.no_grad():
        fake = model(x)
    export_packed(model)
    assert isinstance(model[0], QuantConv2d) and isinstance(model[7], QuantLinear) and model[7].symmetric
    assert model[7].w_bits == 4 and model[7].a_bits == 3
    assert model[9].group_size == group_size
    with torch.no_grad():
        packed = model(x)
    assert (packed - fake).abs().max().item() < 1e-5
    assert not torch.equal(packed, small_cnn()(x))  # it is not just the float model


def test_training_moves_steps_and_lowers_the_loss():
    model = small_cnn()
    x, y = data()
    prepare_qat(model, {"0": 2, "3": 2, "7": 2, "9": 2})
    before = [p.detach().clone() for p in step_parameters(model)]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert any(not torch.equal(a, b) for a, b in zip(before, step_parameters(model)))


def test_prepare_qat_errors_are_clear():
    with pytest.raises(ValueError, match="no calibrated input range"):
        prepare_qat(small_cnn(), {"3": {"w_bits": 4, "a_bits": 8}})
    with pytest.raises(ValueError, match="step_init"):
        prepare_qat(small_cnn(), {"3": 4}, step_init="mse")
    with pytest.raises(ValueError, match="no LSQ layers"):
        export_packed(small_cnn())
    with pytest.raises(ValueError, match="lacks"):
        prepare_qat(small_cnn(), BitPolicy({"nope": 4}))
