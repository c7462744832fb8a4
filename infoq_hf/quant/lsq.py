"""Quantization-aware fine-tuning after the search: Learned Step Size Quantization (LSQ).

LSQ (Esser, McKinstry, Bablani, Appuswamy, Modha, "Learned Step Size Quantization", ICLR 2020)
trains the quantizer's step size s together with the weights. For a value v and integer range
[-Q_N, Q_P]:

    v_hat = round(clamp(v / s, -Q_N, Q_P)) * s

The rounding passes gradients straight through (the straight-through estimator); the gradient
w.r.t. v is 1 inside the range and 0 outside; the gradient w.r.t. s follows from the expression
above (-v/s + round(v/s) inside the range, -Q_N or Q_P at the clamps), and LSQ multiplies it by
g = 1 / sqrt(N * Q_P), N the number of values that share the step, so that steps and weights
learn at comparable rates.

Here:
- weights: symmetric codes, Q_N = 2^(b-1), Q_P = 2^(b-1) - 1, one learned step per output
  channel (or per `group_size` inputs). This is exactly the packed format's symmetric scheme
  (`quant/quantizer.py`: code = clamp(round(w/s), -Q_N, Q_P) + Q_N), so `export_packed` writes
  the learned steps as `weight_scale` and the codes reproduce the fake-quant forward.
- activations (layers with `a_bits`): one learned per-tensor step with the zero point of the
  calibrated range kept fixed, i.e. Q_N = z, Q_P = 2^b - 1 - z (z = 0 after a ReLU: unsigned
  LSQ). This is the packed layers' asymmetric per-tensor input quantizer with a learned scale.

    qat_model = prepare_qat(model, policy, act_ranges=ranges)   # fake-quant layers, float weights
    ... train qat_model as usual (weights, steps, biases and the rest all learn) ...
    packed = export_packed(qat_model)                           # QuantLinear / QuantConv2d
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..policy import BitPolicy
from .apply import resolve_policy, set_submodule
from .modules import HFConv1D, QuantConv2d, QuantLinear, conv2d_args
from .packing import check_bits, pack
from .quantizer import activation_qparams, group_count

STEP_INITS = ("best", "minmax", "lsq")
_MIN_STEP = 1e-8


class _GradScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        return x.clone()  # bit-exact identity (the `(x - x*g).detach() + x*g` trick is not)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Identity in the forward pass; multiplies the gradient by `scale` in the backward pass."""
    return _GradScale.apply(x, float(scale))


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round in the forward pass; pass the gradient straight through. Exact: round(x) - x is exact in
    floating point, so adding x back gives round(x) again."""
    return (torch.round(x) - x).detach() + x


def lsq_quantize(v: torch.Tensor, step: torch.Tensor, q_n: int, q_p: int, grad_factor: float) -> torch.Tensor:
    """LSQ fake quantization `round(clamp(v / s, -q_n, q_p)) * s` with LSQ's gradients (see module doc)."""
    s = grad_scale(step.clamp_min(_MIN_STEP), grad_factor)
    return round_ste(torch.clamp(v / s, -q_n, q_p)) * s


def weight_qrange(bits: int) -> tuple[int, int]:
    """(Q_N, Q_P) of symmetric weight codes at `bits` bits."""
    return 1 << (bits - 1), (1 << (bits - 1)) - 1


def initial_weight_step(
    weight: torch.Tensor, bits: int, group_size: int | None, how: str = "best", where: str = ""
) -> torch.Tensor:
    """A step per output row (or per group), shape [out, n_groups], float32.

    "minmax": max|w| / Q_P, the range-covering step the post-training quantizer uses;
    "lsq": 2 * mean|w| / sqrt(Q_P), LSQ's initialisation; "best": per row/group whichever of the
    two rounds the weight with the smaller squared error."""
    if how not in STEP_INITS:
        raise ValueError(f"step_init must be one of {STEP_INITS}, got {how!r}")
    q_n, q_p = weight_qrange(bits)
    n_groups = group_count(weight.shape, group_size)
    g = weight.detach().float().reshape(weight.shape[0], n_groups, -1)
    minmax = (g.abs().amax(dim=-1) / q_p).clamp_min(_MIN_STEP)
    lsq = (2 * g.abs().mean(dim=-1) / math.sqrt(q_p)).clamp_min(_MIN_STEP)
    if how == "minmax":
        return minmax
    if how == "lsq":
        return lsq

    def err(step):
        s = step[..., None]
        return ((torch.clamp(torch.round(g / s), -q_n, q_p) * s - g) ** 2).sum(dim=-1)

    return torch.where(err(lsq) < err(minmax), lsq, minmax)


class _LSQMixin:
    """Learned weight step (and optional learned input step) shared by the LSQ layers."""

    @classmethod
    def from_float(
        cls,
        layer: nn.Module,
        *,
        w_bits: int,
        group_size: int | None = None,
        a_bits: int | None = None,
        act_range=None,
        step_init: str = "best",
        where: str = "",
    ):
        """The LSQ layer holding `layer`'s weight and bias, its steps initialised by `step_init`."""
        q, weight = cls._blank_for(layer)
        with torch.no_grad():
            q.weight.copy_(weight)
            if layer.bias is not None:
                q.bias.copy_(layer.bias)
        q._init_lsq(weight, w_bits, group_size, a_bits, act_range, step_init, where)
        return q.train(layer.training)

    def _init_lsq(
        self,
        weight: torch.Tensor,
        w_bits: int,
        group_size: int | None,
        a_bits: int | None,
        act_range: tuple[float, float] | None,
        step_init: str,
        where: str,
    ) -> None:
        self.w_bits = check_bits(int(w_bits), where)
        self.group_size = group_size
        self.where = where
        step = initial_weight_step(weight, self.w_bits, group_size, step_init, where)
        self.weight_step = nn.Parameter(step.to(weight.device))
        self.a_bits = None if a_bits is None else check_bits(int(a_bits), where)
        if self.a_bits is not None:
            if act_range is None:
                raise ValueError(
                    f"layer {where!r} has a_bits={a_bits} but no calibrated input range; pass "
                    "act_ranges=calibrate_activation_ranges(model, batches, policy) to prepare_qat"
                )
            scale, zero = activation_qparams(*act_range, self.a_bits)
            self.input_step = nn.Parameter(torch.tensor(scale, dtype=torch.float32, device=weight.device))
            self.register_buffer("input_zero_point", torch.tensor(zero, dtype=torch.int32, device=weight.device))

    def _weight_matrix(self) -> torch.Tensor:
        return self.weight

    def fake_quant_weight(self) -> torch.Tensor:
        w = self._weight_matrix()
        out, n_groups = self.weight_step.shape
        g = w.reshape(out, n_groups, -1)
        q_n, q_p = weight_qrange(self.w_bits)
        factor = 1.0 / math.sqrt(g.shape[-1] * q_p)
        return lsq_quantize(g, self.weight_step[..., None], q_n, q_p, factor).reshape(w.shape)

    def fake_quant_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.a_bits is None:
            return x
        zero = int(self.input_zero_point)
        q_p = (1 << self.a_bits) - 1 - zero
        per_sample = x[0].numel() if x.dim() > 1 else x.numel()
        factor = 1.0 / math.sqrt(per_sample * max(q_p, 1))
        return lsq_quantize(x, self.input_step.to(x.dtype), zero, q_p, factor)

    def weight_codes(self) -> torch.Tensor:
        """The integer codes of the current weight, unsigned as the packed format stores them: [out, fan_in]."""
        with torch.no_grad():
            w = self._weight_matrix().float()
            out, n_groups = self.weight_step.shape
            g = w.reshape(out, n_groups, -1)
            q_n, q_p = weight_qrange(self.w_bits)
            s = self.weight_step.float().clamp_min(_MIN_STEP)[..., None]
            q = torch.clamp(torch.round(g / s), -q_n, q_p) + q_n
            return q.to(torch.uint8).reshape(out, -1)

    def to_packed(self) -> QuantConv2d | QuantLinear:
        """The packed layer whose codes and steps reproduce this layer's fake-quant forward."""
        cls, shape, extra = self._packed_layout()
        q = cls(
            *shape,
            w_bits=self.w_bits,
            group_size=self.group_size,
            symmetric=True,
            a_bits=self.a_bits,
            where=self.where,
            **extra,
        ).to(self.weight.device)
        self._fill_packed(q)
        return q

    def _fill_packed(self, q: QuantConv2d | QuantLinear) -> None:
        with torch.no_grad():
            q.weight_packed = pack(self.weight_codes(), self.w_bits).to(q.weight_scale.device)
            q.weight_scale = self.weight_step.detach().float().clamp_min(_MIN_STEP).clone()
            if self.bias is not None:
                q.bias.data.copy_(self.bias.detach().float())
            if self.a_bits is not None:
                q.input_scale.fill_(float(self.input_step.detach().clamp_min(_MIN_STEP)))
                q.input_zero_point.fill_(int(self.input_zero_point))

    def extra_repr(self) -> str:
        g = "per-channel" if self.group_size is None else f"group={self.group_size}"
        a = "" if self.a_bits is None else f", a_bits={self.a_bits} (learned step)"
        return f"{super().extra_repr()}, LSQ w_bits={self.w_bits} (learned step), {g}{a}"


class LSQConv2d(_LSQMixin, nn.Conv2d):
    """`nn.Conv2d` with LSQ fake quantization of its weight (and input when `a_bits` is set)."""

    @classmethod
    def _blank_for(cls, layer: nn.Conv2d) -> tuple[LSQConv2d, torch.Tensor]:
        """An uninitialised layer of `layer`'s shape, and the weight it takes."""
        weight = layer.weight.detach()
        return cls(*conv2d_args(layer), device=weight.device, dtype=weight.dtype), weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.fake_quant_input(x), self.fake_quant_weight(), self.bias)

    def _packed_layout(self) -> tuple[type, tuple, dict]:
        return QuantConv2d, conv2d_args(self), {}


class LSQLinear(_LSQMixin, nn.Linear):
    """`nn.Linear` with LSQ fake quantization (also stands in for transformers' transposed `Conv1D`,
    whose weight it stores as [out, in]; `export_packed` then marks the packed layer as such)."""

    transposed_source = False

    @classmethod
    def _blank_for(cls, layer: nn.Module) -> tuple[LSQLinear, torch.Tensor]:
        """An uninitialised layer of `layer`'s shape, and the weight it takes ([out, in], a `Conv1D`'s transposed)."""
        transposed = HFConv1D is not None and isinstance(layer, HFConv1D)
        weight = layer.weight.detach().t() if transposed else layer.weight.detach()
        out_f, in_f = weight.shape
        q = cls(in_f, out_f, layer.bias is not None, device=weight.device, dtype=weight.dtype)
        q.transposed_source = transposed
        return q, weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.fake_quant_input(x), self.fake_quant_weight(), self.bias)

    def _packed_layout(self) -> tuple[type, tuple, dict]:
        shape = (self.in_features, self.out_features, self.bias is not None)
        return QuantLinear, shape, {"transposed_source": self.transposed_source}


LSQ_TYPES = (LSQConv2d, LSQLinear)


def prepare_qat(
    model: nn.Module,
    policy: BitPolicy | Mapping,
    *,
    group_size: int | None = None,
    conv_group_size: int | None = None,
    act_ranges: Mapping[str, tuple[float, float]] | None = None,
    step_init: str = "best",
    skip_modules: Iterable[str] = (),
    skip_types: tuple = (),
) -> nn.Module:
    """Replace the policy's layers with LSQ fake-quant layers, in place; returns the model.

    Each replaced layer keeps its float weight (trainable) and gains a learned step per output
    channel (or per `group_size` inputs of a Linear / `conv_group_size` inputs of a Conv2d), at
    the policy's `w_bits`, symmetric. A layer with `a_bits` also learns its input step, starting
    from its calibrated range in `act_ranges` (`calibrate_activation_ranges(model, batches, policy)`).
    `step_init`: "best" (default), "minmax" or "lsq" (see `initial_weight_step`)."""
    if step_init not in STEP_INITS:
        raise ValueError(f"step_init must be one of {STEP_INITS}, got {step_init!r}")
    resolved = resolve_policy(model, policy, skip_modules, skip_types)
    missing = [n for n, b in resolved.items() if b.a_bits is not None and (act_ranges is None or n not in act_ranges)]
    if missing:
        raise ValueError(
            f"layers {missing[:5]} have a_bits but no calibrated input range; pass "
            "act_ranges=calibrate_activation_ranges(model, batches, policy)"
        )
    for name, bits in resolved.items():
        layer = model.get_submodule(name)
        kwargs = dict(
            w_bits=bits.w_bits,
            a_bits=bits.a_bits,
            step_init=step_init,
            where=name,
            act_range=None if bits.a_bits is None else act_ranges[name],
        )
        if isinstance(layer, nn.Conv2d):
            q = LSQConv2d.from_float(layer, group_size=conv_group_size, **kwargs)
        else:
            q = LSQLinear.from_float(layer, group_size=group_size, **kwargs)
        set_submodule(model, name, q)
    return model


def lsq_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LSQ_TYPES)}


def step_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learned step sizes (weight and input), e.g. for their own optimizer group."""
    steps = []
    for m in lsq_layers(model).values():
        steps.append(m.weight_step)
        if m.a_bits is not None:
            steps.append(m.input_step)
    return steps


def export_packed(model: nn.Module) -> nn.Module:
    """Replace every LSQ layer with a packed `QuantConv2d` / `QuantLinear` holding its learned steps, in place.

    The packed layers use symmetric codes with `weight_scale` = the learned step, so they compute
    the same function as the fake-quant layers (up to float rounding). Returns the model."""
    layers = lsq_layers(model)
    if not layers:
        raise ValueError("the model has no LSQ layers to export; call prepare_qat(model, policy) first")
    for name, layer in layers.items():
        set_submodule(model, name, layer.to_packed())
    return model


__all__ = [
    "LSQ_TYPES",
    "LSQConv2d",
    "LSQLinear",
    "export_packed",
    "grad_scale",
    "initial_weight_step",
    "lsq_layers",
    "lsq_quantize",
    "prepare_qat",
    "round_ste",
    "step_parameters",
]
