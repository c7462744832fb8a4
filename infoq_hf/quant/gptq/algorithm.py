"""GPTQ rounding of one weight matrix (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization
for Generative Pre-trained Transformers"), written for this project's packed format.

Round-to-nearest rounds every weight on its own. GPTQ rounds the columns of a layer's weight one at a
time and, after each, updates the columns not yet rounded so that the layer's output on calibration
inputs X moves as little as possible: it minimises ||X W^T - X Q^T||^2 column by column using the
input Hessian H = 2 X^T X / N (through the upper Cholesky factor of H^-1, with lazy block updates).

What is ours (and why):
- Scales and zero points follow `quant.quantizer` exactly (`weight_params` computes them, so the
  range always holds 0, symmetric/asymmetric and the optional clip search are the RTN rules); the
  result is a `QuantizedWeight`, so packing, accounting and reload do not change.
- Grouped weights get each group's parameters when the sweep reaches the group, from the weights
  as updated so far. The lazy block is rounded up to a multiple of the group size so that a group
  always lies inside one block, whose weights are exactly up to date.
- With `act_order` columns are rounded in order of decreasing Hessian diagonal; groups stay the
  contiguous runs of the original column order ("static groups"), their parameters computed up
  front from the original weight. Per-channel parameters are always computed up front.
- A dead input channel (H[i, i] = 0: the input was zero on every calibration sample) gets
  H[i, i] = 1, as GPTQ does, but its weights are kept and rounded to nearest instead of zeroed:
  they cost nothing on the calibration data and may matter on other data. A Hessian that is still
  singular after dampening raises an error naming the layer; there is no silent fallback to RTN.
- The sweep runs in float64. Codes are computed from float32 values with float32 scales, as the RTN
  quantizer does.
- Several widths at once (`gptq_quantize_widths`): the dampened Hessian, the column order and the
  Cholesky factor depend on the Hessian only, so they are computed once; the sweeps of all widths run
  together on the rows of every width stacked (one vector operation per column instead of one per
  width). Every operation on the stacked rows is elementwise, and each width's lazy block update is
  its own matrix product of the single-width shapes, so each width's codes and scales are bit-identical
  to a sweep of that width alone.
- The output error tr(D H D^T) of each width's result (the allocation's GPTQ/RTN error ratio) is read
  off the sweep's scaled errors (`gptq_quantize_widths_with_errors`), not from a product with H.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn

from ..modules import HFConv1D
from ..quantizer import QuantizedWeight, WeightScheme, group_count, weight_params

logger = logging.getLogger(__name__)

DEFAULT_DAMP = 0.1  # GPTQ's dampening, a fraction of the mean Hessian diagonal (see GPTQOptions)


@dataclass(frozen=True)
class GPTQOptions:
    """Settings of the GPTQ sweep.

    damp: added to the Hessian's diagonal, as a fraction of its mean diagonal. 0.1, as transformers'
        GPTQConfig (GPTQ's reference code and llm-compressor use 0.01): on SmolLM2 with 4096 calibration
        tokens, uniform 3-bit dev perplexity 7.7% lower than with 0.01 and 4-bit the same, means over
        float-level jitters (0.03: 2.8% and 3.7% lower; 0.3 worse at both; `benchmarks.studies.gptq_noise`).
        A small calibration set estimates the Hessian's small directions poorly, and the compensation
        GPTQ makes along them does not carry to new text.
    block_size: columns per lazy block update (rounded up to a multiple of the group size).
    act_order: round columns in order of decreasing Hessian diagonal (groups stay contiguous).
    """

    damp: float = DEFAULT_DAMP
    block_size: int = 128
    act_order: bool = False

    def __post_init__(self):
        if isinstance(self.damp, bool) or not isinstance(self.damp, (int, float)) or not 0.0 <= self.damp < 10.0:
            raise ValueError(
                f"GPTQ damp must be a number in [0, 10) (a fraction of the mean Hessian diagonal, "
                f"e.g. {DEFAULT_DAMP}), got {self.damp!r}"
            )
        if isinstance(self.block_size, bool) or not isinstance(self.block_size, int) or self.block_size < 1:
            raise ValueError(f"GPTQ block_size must be a positive int (e.g. 128), got {self.block_size!r}")
        if not isinstance(self.act_order, bool):
            raise ValueError(f"GPTQ act_order must be True or False, got {self.act_order!r}")

    @classmethod
    def from_dict(cls, options: GPTQOptions | Mapping | None) -> GPTQOptions:
        if options is None:
            return cls()
        if isinstance(options, GPTQOptions):
            return options
        unknown = set(options) - {"damp", "block_size", "act_order"}
        if unknown:
            raise ValueError(f"unknown GPTQ options {sorted(unknown)}; accepted: damp, block_size, act_order")
        return cls(**dict(options))

    def to_dict(self) -> dict:
        return asdict(self)


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    scheme: WeightScheme,
    *,
    damp: float = DEFAULT_DAMP,
    block_size: int = 128,
    act_order: bool = False,
    where: str = "",
) -> QuantizedWeight:
    """Round `weight` [out, in] with GPTQ given the input Hessian `hessian` [in, in] (2 X^T X / N).

    Returns the same `QuantizedWeight` the RTN quantizer gives (codes in the original column order),
    so it packs with the packed layers' `set_quantized`. `where` names the layer in errors."""
    return gptq_quantize_widths(
        weight, hessian, [scheme], damp=damp, block_size=block_size, act_order=act_order, where=where
    )[0]


def gptq_quantize_widths(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    schemes: Sequence[WeightScheme],
    *,
    damp: float = DEFAULT_DAMP,
    block_size: int = 128,
    act_order: bool = False,
    where: str = "",
) -> list[QuantizedWeight]:
    """`gptq_quantize` at every scheme of `schemes` (typically one per width) from one factorization of
    the Hessian; element k is bit-identical to `gptq_quantize(weight, hessian, schemes[k], ...)`."""
    kw = dict(damp=damp, block_size=block_size, act_order=act_order, where=where)
    return [qw for qw, _ in gptq_quantize_widths_with_errors(weight, hessian, schemes, **kw)]


def gptq_quantize_widths_with_errors(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    schemes: Sequence[WeightScheme],
    *,
    damp: float = DEFAULT_DAMP,
    block_size: int = 128,
    act_order: bool = False,
    where: str = "",
) -> list[tuple[QuantizedWeight, float]]:
    """`gptq_quantize_widths`, each result with its output error tr(D H D^T) (D: the weight change),
    read off the sweep. The sweep's scaled errors E satisfy D = E U with U^T U = (H + S)^-1 (S: the
    dampening on the diagonal), so ||E||^2 = tr(D (H + S) D^T), and the error is that less
    tr(D S D^T): no product with the Hessian."""
    GPTQOptions(damp, block_size, act_order)  # validates
    if weight.dim() != 2:
        raise ValueError(
            f"layer {where!r}: gptq_quantize takes a 2-D weight [out, in], got shape {tuple(weight.shape)}"
        )
    cols = weight.shape[1]
    if tuple(hessian.shape) != (cols, cols):
        raise ValueError(
            f"layer {where!r}: Hessian shape {tuple(hessian.shape)} does not match the weight's "
            f"input width {cols} (expected ({cols}, {cols}))"
        )
    if not torch.isfinite(weight).all():
        raise ValueError(f"weight of layer {where!r} contains NaN or inf; fix the checkpoint before quantizing")
    if not torch.isfinite(hessian).all():
        raise ValueError(f"layer {where!r}: the calibration Hessian contains NaN or inf; check the calibration inputs")
    if not schemes:
        return []
    order, U, shift = _factor(hessian, damp, act_order, where, weight.device)
    results: list[tuple[QuantizedWeight, float] | None] = [None] * len(schemes)
    sweeps: dict[tuple[int, bool], list[int]] = {}  # schemes whose sweeps share groups and lazy blocks
    for k, scheme in enumerate(schemes):
        key = (group_count(weight.shape, scheme.group_size), act_order or scheme.group_size is None)
        sweeps.setdefault(key, []).append(k)
    for (n_groups, static), ks in sweeps.items():
        rounded = _sweep_widths(weight, U, order, [schemes[k] for k in ks], n_groups, static, block_size, where)
        for k, (qw, damped) in zip(ks, rounded):
            change = (weight.detach().float() - qw.dequantize()).double()  # both float32, as the sweep rounds
            results[k] = (qw, damped - float(change.square().sum(0) @ shift))
    return results


def _factor(hessian, damp, act_order, where, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The column order, the upper Cholesky factor of the dampened, permuted H^-1 (row i holds the
    updates column i's error makes) and the dampening added to H's diagonal (original order)."""
    cols = hessian.shape[0]
    H = hessian.detach().to(device=device, dtype=torch.float64).clone()
    diag = H.diagonal()
    dead = diag == 0
    if dead.any():
        logger.warning(
            "layer %r: %d input channels are zero on every calibration sample; their weights are "
            "rounded to nearest (no error compensation)",
            where,
            int(dead.sum()),
        )
        diag[dead] = 1.0
    diag.add_(damp * float(diag.mean()))
    shift = diag - hessian.detach().diagonal().to(device=device, dtype=torch.float64)  # no second full copy
    if act_order:
        order = torch.argsort(H.diagonal(), descending=True, stable=True)
        H = H[order][:, order]
    else:
        order = torch.arange(cols, device=device)
    # With J the reversal of the columns and J H J = L L^T, U = J L^-1 J is upper triangular and
    # U^T U = J (J H J)^-1 J = H^-1: one factorization and one triangular inverse, where factoring H,
    # inverting it and factoring H^-1 takes three
    try:
        L = torch.linalg.cholesky(H.flip(0, 1))
        eye = torch.eye(cols, dtype=H.dtype, device=H.device)
        U = torch.linalg.solve_triangular(L, eye, upper=False).flip(0, 1)
    except torch.linalg.LinAlgError:
        raise ValueError(
            f"layer {where!r}: the calibration Hessian is singular even after dampening (damp={damp}); raise "
            "damp (e.g. gptq damp=0.1) or give more calibration data"
        ) from None
    return order, U, shift


def _sweep_widths(weight, U, order, schemes, n_groups, static, block_size, where) -> list[tuple]:
    """GPTQ's column sweep with lazy block updates, for the rows of every scheme stacked: each scheme's
    `QuantizedWeight` and the squared norm of its scaled errors. The weights are held transposed
    ([cols, rows], sweep order) so that each column the sweep reads and writes is contiguous in memory."""
    out, cols = weight.shape
    widths, device = len(schemes), weight.device
    gsize = cols // n_groups
    WT = weight.detach().to(torch.float64)[:, order].repeat(widths, 1).t().contiguous()  # [cols, widths * out]
    scale = torch.empty(widths, out, n_groups, dtype=torch.float32, device=device)
    zero = torch.zeros(widths, out, n_groups, dtype=torch.float32, device=device)
    if static:
        for k, scheme in enumerate(schemes):
            layer_scale, layer_zero = weight_params(weight.detach().float(), scheme)  # finite: checked above
            scale[k], zero[k] = layer_scale.to(device), layer_zero.to(device)
        block = block_size
    else:
        block = gsize * -(-block_size // gsize)  # a group never straddles two blocks
    ranges = [_code_range(s.bits, s.symmetric) for s in schemes]
    qmin = torch.tensor([lo for lo, _ in ranges], dtype=torch.float32, device=device).repeat_interleave(out)
    qmax = torch.tensor([hi for _, hi in ranges], dtype=torch.float32, device=device).repeat_interleave(out)
    group_schemes = [WeightScheme(s.bits, None, s.symmetric, s.clip_search) for s in schemes]
    group_of = (order // gsize).tolist()  # scale group of each column in sweep order
    pivots = U.diagonal().tolist()
    swept = torch.empty(cols, widths * out, dtype=torch.float32, device=device)  # integer codes, sweep order
    squared = torch.zeros(widths, dtype=torch.float64, device=device)  # ||E||^2 of each scheme's rows
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1, U1 = WT[i1:i2].clone(), U[i1:i2, i1:i2]
        E1 = torch.empty_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            g = group_of[col]
            if not static and col % gsize == 0:  # the sweep reaches a new group: its parameters now
                for k, group_scheme in enumerate(group_schemes):
                    rows = W1[i : i + gsize, k * out : (k + 1) * out].t().float()  # finite: checked above
                    group_scale, group_zero = weight_params(rows, group_scheme)
                    scale[k, :, g], zero[k, :, g] = group_scale[:, 0], group_zero[:, 0]
            if static or col % gsize == 0:  # (the columns of a group share its parameters)
                s, z = scale[:, :, g].reshape(-1), zero[:, :, g].reshape(-1)
            w = W1[i]
            # written in place into the codes and errors they are kept in (two copies fewer per column)
            q = torch.clamp(torch.round(w.float() / s) + z, qmin, qmax, out=swept[col])
            err = torch.div(w - ((q - z) * s).double(), pivots[col], out=E1[i])
            W1[i:].addr_(U1[i, i:], err, alpha=-1)  # the columns not yet rounded absorb the error
        squared += E1.square().sum(0).reshape(widths, out).sum(1)
        if i2 < cols:
            for k in range(widths):  # each width's update is the single-width product, same shapes
                part = slice(k * out, (k + 1) * out)
                WT[i2:, part] -= (E1[:, part].t() @ U[i1:i2, i2:]).t()
    codes = torch.empty_like(swept)
    codes[order] = swept
    codes = (codes.t() - qmin[:, None]).to(torch.uint8)
    return [
        (
            QuantizedWeight(
                codes[k * out : (k + 1) * out].clone(),
                scale[k].clone(),
                None if scheme.symmetric else zero[k].to(torch.uint8),
                scheme,
                tuple(weight.shape),
            ),
            float(squared[k]),
        )
        for k, scheme in enumerate(schemes)
    ]


def _code_range(bits: int, symmetric: bool) -> tuple[int, int]:
    """Smallest and largest integer code before the unsigned offset (the RTN quantizer's range)."""
    low = -(1 << (bits - 1)) if symmetric else 0
    return low, low + (1 << bits) - 1


def quantize_layer_gptq(
    name: str, layer: nn.Module, hessian: torch.Tensor, scheme: WeightScheme, options: GPTQOptions
) -> QuantizedWeight:
    """GPTQ for one float Linear / transformers Conv1D / Conv2d given its accumulated Hessian(s)
    ([groups, d, d]); the result has the shape the packed layer stores ([out, in] or the conv's)."""
    return quantize_layer_gptq_widths(name, layer, hessian, [scheme], options)[0]


def quantize_layer_gptq_widths(
    name: str,
    layer: nn.Module,
    hessian: torch.Tensor,
    schemes: Sequence[WeightScheme],
    options: GPTQOptions,
    weight: torch.Tensor | None = None,
) -> list[QuantizedWeight]:
    """`quantize_layer_gptq` at every scheme of `schemes`, from one factorization per Hessian.
    `weight`: the layer's weight as it stores it, when it is not `layer.weight` (an offloaded layer)."""
    return [qw for qw, _ in quantize_layer_gptq_widths_with_errors(name, layer, hessian, schemes, options, weight)]


def quantize_layer_gptq_widths_with_errors(
    name: str,
    layer: nn.Module,
    hessian: torch.Tensor,
    schemes: Sequence[WeightScheme],
    options: GPTQOptions,
    weight: torch.Tensor | None = None,
) -> list[tuple[QuantizedWeight, float]]:
    """`quantize_layer_gptq_widths`, each result with its output error on the Hessian(s), summed over
    conv groups (`gptq_quantize_widths_with_errors`)."""
    kw = dict(damp=options.damp, block_size=options.block_size, act_order=options.act_order, where=name)
    w = (layer.weight if weight is None else weight).detach()
    if isinstance(layer, nn.Conv2d):
        parts = [
            gptq_quantize_widths_with_errors(wg.reshape(wg.shape[0], -1), hg, schemes, **kw)
            for wg, hg in zip(w.chunk(layer.groups), hessian)
        ]
        out = []
        for k, scheme in enumerate(schemes):
            group_parts = [p[k][0] for p in parts]
            codes = torch.cat([p.codes for p in group_parts])
            zp = None if scheme.symmetric else torch.cat([p.zero_point for p in group_parts])
            qw = QuantizedWeight(codes, torch.cat([p.scale for p in group_parts]), zp, scheme, tuple(w.shape))
            out.append((qw, sum(p[k][1] for p in parts)))
        return out
    transposed = HFConv1D is not None and isinstance(layer, HFConv1D)
    return gptq_quantize_widths_with_errors(w.t() if transposed else w, hessian[0], schemes, **kw)


__all__ = ["GPTQOptions", "gptq_quantize", "gptq_quantize_widths", "quantize_layer_gptq", "quantize_layer_gptq_widths"]
