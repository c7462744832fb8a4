"""Uniform integer quantizers for weights (per channel or per group) and activations (per tensor).

A weight of any layer is viewed as a matrix [out_channels, fan_in] (a conv's
[out, in/groups, kh, kw] is flattened over its last three axes). Each output
row, or each run of `group_size` consecutive entries of a row, gets its own
scale (and zero point when asymmetric); a row whose width the group size does
not divide gets a smaller fitting size (`effective_group_size`):

    asymmetric: code = clamp(round(w / s) + z, 0, 2^b - 1),   w_hat = (code - z) * s
    symmetric:  code = clamp(round(w / s), -2^(b-1), 2^(b-1) - 1) + 2^(b-1),
                w_hat = (code - 2^(b-1)) * s

Codes are always stored unsigned so one packer serves both. The range always
contains 0 (so zero weights and padding stay exact and a constant group cannot
divide by zero). Round-to-nearest, optionally with a clipping search that
shrinks the range per row/group to the ratio with the smallest squared error
(at widths up to CLIP_MAX_BITS; wider grids keep the full range).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .packing import check_bits

_EPS = 1e-12
CLIP_RATIOS = torch.linspace(1.0, 0.5, 21).tolist()
# The least-squares clip lowered perplexity at 2-4 bits and raised it at 5 and 8 (SmolLM2, dev windows,
# benchmarks/studies/clip_search.py --setting gguf): wider grids lose less to an outlier than the clip costs it.
CLIP_MAX_BITS = 4


@dataclass(frozen=True)
class WeightScheme:
    """How a weight is quantized: bits, grouping, symmetry, clipping search (applied up to CLIP_MAX_BITS)."""

    bits: int
    group_size: int | None = None  # None: one scale per output channel; see effective_group_size per layer
    symmetric: bool = False
    clip_search: bool = False

    def __post_init__(self):
        check_bits(self.bits)
        if self.group_size is not None and (not isinstance(self.group_size, int) or self.group_size < 1):
            raise ValueError(f"group_size must be a positive int or None (per channel), got {self.group_size!r}")


@dataclass
class QuantizedWeight:
    """Integer codes plus the parameters that map them back to floats."""

    codes: torch.Tensor  # uint8 [out, fan_in]
    scale: torch.Tensor  # float32 [out, n_groups]
    zero_point: torch.Tensor | None  # uint8 [out, n_groups], None when symmetric
    scheme: WeightScheme
    shape: tuple[int, ...]  # the float weight's shape

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_codes(self.codes, self.scale, self.zero_point, self.scheme).reshape(self.shape).to(dtype)


FALLBACK_GROUP_SIZES = (256, 128, 64, 32)


def _fan_in(shape: tuple[int, ...] | torch.Size) -> int:
    return math.prod(int(d) for d in shape[1:])


def effective_group_size(shape: tuple[int, ...] | torch.Size, requested: int | None) -> int | None:
    """The group size a weight of `shape` ([out, ...], grouped along its fan-in) gets for a requested one.

    The request itself when it divides the layer's input width; otherwise the largest of 256/128/64/32
    not above the request that does; otherwise None (one scale per output channel). So one layer of an
    awkward width (SmolLM2's 576, 704 ...) never blocks a model, and every group stays full: the packed
    format, the accounting and the export need no partial-group case. The quantizer, the packed layers,
    the byte accounting, the search and the checkpoint all call this one rule."""
    if requested is None:
        return None
    fan_in = _fan_in(shape)
    if fan_in % requested == 0:
        return requested
    return next((g for g in FALLBACK_GROUP_SIZES if g <= requested and fan_in % g == 0), None)


def group_count(shape: tuple[int, ...] | torch.Size, group_size: int | None) -> int:
    """Number of scale groups per output row for a requested group size (see `effective_group_size`)."""
    group = effective_group_size(shape, group_size)
    return 1 if group is None else _fan_in(shape) // group


def _grouped(weight: torch.Tensor, group_size: int | None) -> torch.Tensor:
    """View a weight as [out, n_groups, group] in float32."""
    out = weight.shape[0]
    n_groups = group_count(weight.shape, group_size)
    return weight.detach().reshape(out, n_groups, -1).float()


def _qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    if symmetric:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _params_for_range(lo: torch.Tensor, hi: torch.Tensor, bits: int, symmetric: bool):
    qmin, qmax = _qrange(bits, symmetric)
    if symmetric:
        scale = torch.maximum(hi.abs(), lo.abs()) / qmax
        return scale.clamp_min(_EPS), torch.zeros_like(scale)
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(_EPS)
    zero = torch.round(-lo / scale).clamp(qmin, qmax)
    return scale, zero


def _fake(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, symmetric: bool) -> torch.Tensor:
    qmin, qmax = _qrange(bits, symmetric)
    q = torch.clamp(torch.round(w / scale[..., None]) + zero[..., None], qmin, qmax)
    return (q - zero[..., None]) * scale[..., None]


def quantize_weight(weight: torch.Tensor, scheme: WeightScheme, where: str = "") -> QuantizedWeight:
    """Quantize a float weight to integer codes; `where` names the layer in errors."""
    if not torch.isfinite(weight).all():
        raise ValueError(f"weight of layer {where!r} contains NaN or inf; fix the checkpoint before quantizing")
    g = _grouped(weight, scheme.group_size)
    scale, zero = _grouped_params(g, scheme)
    qmin, qmax = _qrange(scheme.bits, scheme.symmetric)
    q = torch.clamp(torch.round(g / scale[..., None]) + zero[..., None], qmin, qmax)
    codes = (q - qmin).to(torch.uint8).reshape(weight.shape[0], -1)
    zero_point = None if scheme.symmetric else zero.to(torch.uint8)
    return QuantizedWeight(codes, scale.float(), zero_point, scheme, tuple(weight.shape))


def weight_params(weight: torch.Tensor, scheme: WeightScheme) -> tuple[torch.Tensor, torch.Tensor]:
    """The scales and zero points (as float, 0 when symmetric) `quantize_weight` gives a finite weight,
    without its codes or its finiteness check: for callers that round by other means (GPTQ's sweep)."""
    return _grouped_params(_grouped(weight, scheme.group_size), scheme)


def _grouped_params(g: torch.Tensor, scheme: WeightScheme) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales and zero points of a weight viewed as [out, n_groups, group]: its range, optionally clipped."""
    bits, sym = scheme.bits, scheme.symmetric
    lo = g.amin(dim=-1).clamp_max(0.0)
    hi = g.amax(dim=-1).clamp_min(0.0)
    scale, zero = _params_for_range(lo, hi, bits, sym)
    if scheme.clip_search and bits <= CLIP_MAX_BITS:
        best_err = ((_fake(g, scale, zero, bits, sym) - g) ** 2).sum(dim=-1)
        for ratio in CLIP_RATIOS[1:]:
            s, z = _params_for_range(lo * ratio, hi * ratio, bits, sym)
            err = ((_fake(g, s, z, bits, sym) - g) ** 2).sum(dim=-1)
            better = err < best_err
            scale, zero, best_err = (
                torch.where(better, s, scale),
                torch.where(better, z, zero),
                torch.minimum(err, best_err),
            )
    return scale, zero


def dequantize_codes(
    codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None, scheme: WeightScheme
) -> torch.Tensor:
    """Map uint8 codes [out, fan_in] back to float32 [out, fan_in]."""
    out, n_groups = scale.shape
    c = codes.reshape(out, n_groups, -1).float()
    offset = float(1 << (scheme.bits - 1)) if scheme.symmetric else zero_point.float()[..., None]
    return ((c - offset) * scale[..., None]).reshape(out, -1)


def fake_quantize_weight(weight: torch.Tensor, scheme: WeightScheme, where: str = "") -> torch.Tensor:
    """Quantize then dequantize, keeping the weight's shape and dtype (used by probing)."""
    return quantize_weight(weight, scheme, where).dequantize(weight.dtype)


# ----------------------------------------------------------------------------- activations


def activation_qparams(lo: float, hi: float, bits: int) -> tuple[float, int]:
    """Per-tensor asymmetric (scale, zero point) for an observed activation range."""
    check_bits(bits)
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    qmax = (1 << bits) - 1
    scale = max((hi - lo) / qmax, _EPS)
    zero = int(min(max(round(-lo / scale), 0), qmax))
    return scale, zero


def fake_quantize_activation(
    x: torch.Tensor, scale: float | torch.Tensor, zero: int | torch.Tensor, bits: int
) -> torch.Tensor:
    """Per-tensor asymmetric fake quantization of an activation."""
    qmax = (1 << bits) - 1
    q = torch.clamp(torch.round(x / scale) + zero, 0, qmax)
    return (q - zero) * scale


class RangeObserver:
    """Collects the min/max of a tensor stream (optionally a percentile of |x| per batch)."""

    def __init__(self, percentile: float | None = None):
        if percentile is not None and not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile must lie in (0, 100], got {percentile}")
        self.percentile = percentile
        self.lo = float("inf")
        self.hi = float("-inf")

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float().reshape(-1)
        if not torch.isfinite(x).all():
            raise ValueError("activation contains NaN or inf while calibrating its range")
        if self.percentile is None or self.percentile == 100.0:
            lo, hi = float(x.min()), float(x.max())
        else:
            sample = x if x.numel() <= 1 << 20 else x[:: x.numel() // (1 << 20) + 1]
            q = torch.quantile(sample, torch.tensor([1 - self.percentile / 100, self.percentile / 100]))
            lo, hi = float(q[0]), float(q[1])
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)

    @property
    def seen(self) -> bool:
        return self.lo <= self.hi
