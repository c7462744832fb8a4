"""The GPTQ code as it was before the one-pass candidates (infoq_hf/quant/gptq.py at commit f754775),
frozen as the reference the new code must match bit for bit: one width at a time, a factorization per
width. Not used by the library; only `tests/quant/gptq/test_gptq_one_pass.py` imports it."""

# ruff: noqa
from __future__ import annotations

# The original module docstring follows.
"""GPTQ rounding (Frantar et al., 2022, "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers"), written for this project's packed format.

Round-to-nearest rounds every weight on its own. GPTQ rounds the columns of a layer's weight one at a
time and, after each, updates the columns not yet rounded so that the layer's output on calibration
inputs X moves as little as possible: it minimises ||X W^T - X Q^T||^2 column by column using the
input Hessian H = 2 X^T X / N (through the upper Cholesky factor of H^-1, with lazy block updates).

What is ours (and why):
- Scales and zero points follow `quant.quantizer` exactly (`quantize_weight` computes them, so the
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
- The sweep runs in float64; the Hessian is summed in float64 from float32 products of at most 4096
  rows each. Codes are computed from float32 values with float32 scales, as the RTN quantizer does.

Model level (`gptq_quantize_model`): sequential by block. The blocks are those of
`quant.apply.find_blocks` (children of the outermost Sequential/ModuleList: decoder layers,
CNN stages). One traced forward pass on the first batch finds the chains of blocks that feed each
other directly (block k+1 receives block k's output as its first argument). For each chain the
inputs of its first block are captured (a forward pre-hook stops the forward pass), then the
chain runs block by block: the Hessians of the block's layers come from inputs produced by the
already quantized blocks before it, the layers are rounded and packed, and the block is rerun to
give the next block's inputs; keyword arguments (attention mask, position embeddings) are replayed,
key/value caches dropped. Only one block's inputs are held at a time. Policy layers outside any
chain (a head after pooling, a model without a block stack) get their Hessians from full forward
passes of the model, quantized so far, all such consecutive layers in one pass.

For the allocation (`gptq_candidates`): the same block walk over the float model, each layer rounded
at every candidate width, with the output error GPTQ leaves relative to round-to-nearest's; the
pipeline rescales the sensitivity costs by it and refines with these rounded weights.
"""


import collections
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from infoq_hf.quant.modules import HFConv1D
from infoq_hf.quant.quantizer import QuantizedWeight, WeightScheme, _qrange, group_count, quantize_weight

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GPTQOptions:
    """Settings of the GPTQ sweep.

    damp: added to the Hessian's diagonal, as a fraction of its mean diagonal (the library's default).
    block_size: columns per lazy block update (rounded up to a multiple of the group size).
    act_order: round columns in order of decreasing Hessian diagonal (groups stay contiguous).
    """

    damp: float = 0.1
    block_size: int = 128
    act_order: bool = False

    def __post_init__(self):
        if isinstance(self.damp, bool) or not isinstance(self.damp, (int, float)) or not 0.0 <= self.damp < 10.0:
            raise ValueError(
                f"GPTQ damp must be a number in [0, 10) (a fraction of the mean Hessian diagonal, "
                f"e.g. 0.1), got {self.damp!r}"
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


# ----------------------------------------------------------------------------- one weight matrix


def gptq_quantize(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    scheme: WeightScheme,
    *,
    damp: float = 0.1,
    block_size: int = 128,
    act_order: bool = False,
    where: str = "",
) -> QuantizedWeight:
    """Round `weight` [out, in] with GPTQ given the input Hessian `hessian` [in, in] (2 X^T X / N).

    Returns the same `QuantizedWeight` the RTN quantizer gives (codes in the original column order),
    so it packs with `_PackedWeightLayer.set_quantized`. `where` names the layer in errors."""
    GPTQOptions(damp, block_size, act_order)  # validates
    if weight.dim() != 2:
        raise ValueError(
            f"layer {where!r}: gptq_quantize takes a 2-D weight [out, in], got shape {tuple(weight.shape)}"
        )
    out, cols = weight.shape
    if tuple(hessian.shape) != (cols, cols):
        raise ValueError(
            f"layer {where!r}: Hessian shape {tuple(hessian.shape)} does not match the weight's "
            f"input width {cols} (expected ({cols}, {cols}))"
        )
    if not torch.isfinite(weight).all():
        raise ValueError(f"weight of layer {where!r} contains NaN or inf; fix the checkpoint before quantizing")
    if not torch.isfinite(hessian).all():
        raise ValueError(f"layer {where!r}: the calibration Hessian contains NaN or inf; check the calibration inputs")
    with _one_cpu_thread(weight.device):
        return _gptq(weight, hessian, scheme, damp, block_size, act_order, where)


def _gptq(weight, hessian, scheme, damp, block_size, act_order, where) -> QuantizedWeight:
    out, cols = weight.shape
    n_groups = group_count(weight.shape, scheme.group_size)
    gsize = cols // n_groups
    W = weight.detach().to(torch.float64).clone()
    H = hessian.detach().to(device=W.device, dtype=torch.float64).clone()
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
    order = (
        torch.argsort(H.diagonal(), descending=True, stable=True) if act_order else torch.arange(cols, device=W.device)
    )
    if act_order:
        W, H = W[:, order], H[order][:, order]
    try:  # the upper Cholesky factor of H^-1 (row i: the updates column i's error makes), as the library
        L = torch.linalg.cholesky(H.flip(0, 1))  # forms it (its test checks it against the three-step form)
        U = torch.linalg.solve_triangular(L, torch.eye(cols, dtype=H.dtype, device=H.device), upper=False).flip(0, 1)
    except torch.linalg.LinAlgError:
        raise ValueError(
            f"layer {where!r}: the calibration Hessian is singular even after dampening (damp={damp}); raise "
            "damp (e.g. gptq damp=0.1) or give more calibration data"
        ) from None
    group_of = order // gsize  # scale group of each column in sweep order
    static = act_order or scheme.group_size is None
    if static:
        params = quantize_weight(weight.detach().float(), scheme, where)
        scale, zero = params.scale.to(W.device), _zero(params).to(W.device)
        block = block_size
    else:
        scale = torch.empty(out, n_groups, dtype=torch.float32, device=W.device)
        zero = torch.zeros(out, n_groups, dtype=torch.float32, device=W.device)
        block = gsize * -(-block_size // gsize)  # a group never straddles two blocks
    qmin, qmax = _qrange(scheme.bits, scheme.symmetric)
    group_scheme = WeightScheme(scheme.bits, None, scheme.symmetric, scheme.clip_search)
    codes = torch.empty(out, cols, dtype=torch.uint8, device=W.device)
    _sweep(W, U, codes, scale, zero, order, group_of, gsize, block, static, qmin, qmax, group_scheme, where)
    zero_point = None if scheme.symmetric else zero.to(torch.uint8)
    return QuantizedWeight(codes, scale, zero_point, scheme, tuple(weight.shape))


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device):
    """The column sweep is thousands of tiny vector ops, for which intra-op threads cost far more than
    they give on CPU (measured: a 1536x576 weight in 0.4 s with one thread, 15 s with two threads on
    two busy cores); the previous thread count is restored."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _sweep(W, U, codes, scale, zero, order, group_of, gsize, block, static, qmin, qmax, group_scheme, where):
    """GPTQ's column sweep with lazy block updates; fills `codes` (and, unless static, the group
    parameters `scale` / `zero`) in place."""
    cols = W.shape[1]
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1, U1 = W[:, i1:i2].clone(), U[i1:i2, i1:i2]
        E1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            g = int(group_of[col])
            if not static and col % gsize == 0:  # the sweep reaches a new group: its parameters now
                p = quantize_weight(W1[:, i : i + gsize].float(), group_scheme, where)
                scale[:, g], zero[:, g] = p.scale[:, 0], _zero(p)[:, 0]
            s, z = scale[:, g], zero[:, g]
            q = torch.clamp(torch.round(W1[:, i].float() / s) + z, qmin, qmax)
            codes[:, order[col]] = (q - qmin).to(torch.uint8)
            err = (W1[:, i] - ((q - z) * s).double()) / U1[i, i]
            W1[:, i:] -= err[:, None] * U1[i, i:][None, :]
            E1[:, i] = err
        W[:, i2:] -= E1 @ U[i1:i2, i2:]


def _zero(params: QuantizedWeight) -> torch.Tensor:
    """The zero point of RTN parameters as float (0 when symmetric)."""
    if params.zero_point is None:
        return torch.zeros_like(params.scale)
    return params.zero_point.float()


# ----------------------------------------------------------------------------- layers


class _HessianAccumulator:
    """Sums 2 x x^T over a layer's inputs; Conv2d inputs are unfolded into patches, one Hessian per
    conv group. Products are float32 over at most `_ROWS` rows each, summed in float64 (float64
    products cost 2-4x more and change nothing at these row counts). Linear layers fed the very same
    tensor (q/k/v, gate/up) share one product through `memo`."""

    _ROWS = 4096

    def __init__(self, name: str, layer: nn.Module, memo: dict | None = None):
        self.name, self.layer = name, layer
        self.is_conv = isinstance(layer, nn.Conv2d)
        self.memo = {} if memo is None else memo
        self.sum: torch.Tensor | None = None
        self.count = 0

    def __call__(self, module, args):
        self.add(args[0])

    @torch.no_grad()
    def add(self, x: torch.Tensor) -> None:
        if not self.is_conv and self.memo.get("x") is x:  # holding x keeps its identity unique
            h, n = self.memo["h"], self.memo["n"]
        else:
            if not torch.isfinite(x).all():
                raise ValueError(
                    f"layer {self.name!r}: a calibration input contains NaN or inf; GPTQ needs finite "
                    "activations (check the model in float and the calibration batches)"
                )
            h, n = None, 0
            for chunk in x.split(8) if self.is_conv else [x.reshape(-1, x.shape[-1])]:
                rows = self._rows(chunk)  # [groups, n, d] float32
                for r in range(0, rows.shape[1], self._ROWS):
                    part = rows[:, r : r + self._ROWS]
                    prod = (2.0 * part.transpose(1, 2) @ part).double()
                    h = prod if h is None else h + prod
                n += rows.shape[1]
            if not self.is_conv:
                self.memo.update(x=x, h=h, n=n)
        self.sum = h.clone() if self.sum is None else self.sum + h
        self.count += n

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        if not self.is_conv:
            return x.float()[None]
        c = self.layer
        x = F.pad(x.float(), _conv_padding(c), mode="constant" if c.padding_mode == "zeros" else c.padding_mode)
        patches = F.unfold(x, c.kernel_size, dilation=c.dilation, stride=c.stride)  # [N, C*kh*kw, L]
        n, _, length = patches.shape
        patches = patches.reshape(n, c.groups, -1, length).permute(1, 0, 3, 2)  # [groups, N, L, d]
        return patches.reshape(c.groups, n * length, -1)

    def hessian(self) -> torch.Tensor:
        if self.count == 0:
            raise ValueError(
                f"no calibration data reached layer {self.name!r}; check the batches and the forward "
                "function (is the layer used by the model's forward pass?)"
            )
        return self.sum / self.count


def _conv_padding(conv: nn.Conv2d) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) padding of a Conv2d, explicit also for padding='same'/'valid'."""
    if conv.padding == "valid":
        return (0, 0, 0, 0)
    if conv.padding == "same":
        pads = []
        for k, d in zip(reversed(conv.kernel_size), reversed(conv.dilation)):
            total = d * (k - 1)
            pads += [total // 2, total - total // 2]
        return tuple(pads)
    ph, pw = conv.padding
    return (pw, pw, ph, ph)


def quantize_layer_gptq(
    name: str, layer: nn.Module, hessian: torch.Tensor, scheme: WeightScheme, options: GPTQOptions
) -> QuantizedWeight:
    """GPTQ for one float Linear / transformers Conv1D / Conv2d given its accumulated Hessian(s)
    ([groups, d, d]); the result has the shape the packed layer stores ([out, in] or the conv's)."""
    kw = dict(damp=options.damp, block_size=options.block_size, act_order=options.act_order, where=name)
    if isinstance(layer, nn.Conv2d):
        w = layer.weight.detach()
        parts = [
            gptq_quantize(wg.reshape(wg.shape[0], -1), hg, scheme, **kw)
            for wg, hg in zip(w.chunk(layer.groups), hessian)
        ]
        codes = torch.cat([p.codes for p in parts])
        zp = None if scheme.symmetric else torch.cat([p.zero_point for p in parts])
        return QuantizedWeight(codes, torch.cat([p.scale for p in parts]), zp, scheme, tuple(w.shape))
    transposed = HFConv1D is not None and isinstance(layer, HFConv1D)
    w = layer.weight.detach().t() if transposed else layer.weight.detach()
    return gptq_quantize(w, hessian[0], scheme, **kw)


# ----------------------------------------------------------------------------- model


class _StopForward(Exception):
    """Raised by a hook to end a forward pass once the inputs it needs are captured."""


@dataclass
class GPTQReport:
    """What a model-level GPTQ pass did: layers rounded, blocks run sequentially, the largest
    activation buffer held (bytes of one block's inputs over all calibration batches), wall time."""

    layers: int = 0
    blocks: int = 0
    full_passes: int = 0
    max_activation_bytes: int = 0
    wall_s: float = 0.0


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def _nbytes(obj, seen: set) -> int:
    if isinstance(obj, torch.Tensor):
        if id(obj) in seen:
            return 0
        seen.add(id(obj))
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(_nbytes(o, seen) for o in obj)
    if isinstance(obj, dict):
        return sum(_nbytes(o, seen) for o in obj.values())
    return 0


def _replayable(kwargs: dict) -> dict:
    """A block's keyword arguments safe to replay: key/value caches would grow on every replay."""
    try:
        from transformers.cache_utils import Cache
    except ImportError:  # transformers is optional
        Cache = ()
    kwargs = {k: (None if isinstance(v, Cache) else v) for k, v in kwargs.items()}
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    return kwargs


def _owner_block(name: str, blocks: Iterable[str]) -> str | None:
    for b in blocks:
        if name == b or name.startswith(b + "."):
            return b
    return None


def _trace_stages(model, blocks: dict[str, nn.Module], layer_names: list[str], batch, forward):
    """Stages in execution order: ("chain", [block, ...]) for blocks feeding each other directly,
    ("layers", [name, ...]) for consecutive policy layers outside chains. Blocks that run more than
    once per forward pass cannot be replayed; their layers are treated as outside layers."""
    blocks = dict(blocks)
    while True:
        outside = [n for n in layer_names if _owner_block(n, blocks) is None]
        events: list[tuple[str, str, object]] = []  # the tensors are kept alive, so `is` is a safe test
        hooks = []
        for b, m in blocks.items():
            hooks.append(
                m.register_forward_pre_hook(
                    lambda mod, args, b=b: events.append(("start", b, args[0] if args else None))
                )
            )
            hooks.append(m.register_forward_hook(lambda mod, args, out, b=b: events.append(("end", b, _first(out)))))
        for n in outside:
            hooks.append(
                model.get_submodule(n).register_forward_pre_hook(
                    lambda mod, args, n=n: events.append(("layer", n, None))
                )
            )
        try:
            forward(model, batch)
        finally:
            for h in hooks:
                h.remove()
        runs: dict[str, int] = {}
        for kind, name, _ in events:
            if kind == "start":
                runs[name] = runs.get(name, 0) + 1
        repeated = [b for b, c in runs.items() if c > 1]
        if not repeated:
            break
        for b in repeated:
            del blocks[b]
    stages: list[tuple[str, list[str]]] = []
    previous_output = None
    for kind, name, tensor in events:
        if kind == "start":
            chained = stages and stages[-1][0] == "chain" and previous_output is not None and tensor is previous_output
            if chained:
                stages[-1][1].append(name)
            else:
                stages.append(("chain", [name]))
            previous_output = None
        elif kind == "end":
            previous_output = tensor
        else:
            if not (stages and stages[-1][0] == "layers"):
                stages.append(("layers", []))
            if name not in stages[-1][1]:
                stages[-1][1].append(name)
            previous_output = None
    # Keep only the blocks of a chain from its first to its last block holding policy layers.
    trimmed = []
    for kind, names in stages:
        if kind == "chain":
            holds = [i for i, b in enumerate(names) if any(_owner_block(n, [b]) for n in layer_names)]
            if not holds:
                continue
            names = names[holds[0] : holds[-1] + 1]
        trimmed.append((kind, names))
    return trimmed


@torch.no_grad()
def gptq_quantize_model(
    model: nn.Module,
    policy,
    calibration: Iterable,
    *,
    scheme=None,
    skip_modules: Iterable[str] = (),
    skip_types: tuple = (),
    act_ranges: Mapping[str, tuple[float, float]] | None = None,
    options: GPTQOptions | Mapping | None = None,
    forward: Callable | None = None,
    progress: bool = True,
) -> GPTQReport:
    """Replace the layers named by `policy` with packed layers rounded by GPTQ, in place.

    Same layer settings as `quantize_model` (which calls this for `rounding="gptq"`): `scheme`, a
    `PackingScheme` (or its dict), defaults to the policy's scheme, else per output channel; `calibration`
    is a list of batches run with `forward(model, batch)` (default `quant.apply.default_forward`).
    Embeddings in the policy are rounded to nearest (a lookup has no Hessian), before the blocks they feed.
    On an error the float layers are put back. Returns a `GPTQReport`."""
    from infoq_hf.quant.apply import (
        set_submodule,
        default_forward,
        pack_embeddings,
        packed_layer,
        packing_scheme_for,
        resolve_policy,
    )

    t0 = time.perf_counter()
    scheme = packing_scheme_for(policy, scheme)
    options = GPTQOptions.from_dict(options)
    forward = forward or default_forward
    resolved = resolve_policy(model, policy, skip_modules, skip_types)
    batches = None if calibration is None else list(calibration)
    if not batches:
        first = next(iter(resolved), None)
        raise ValueError(
            f"rounding='gptq' needs calibration batches to round layer {first!r}"
            + (f" (and {len(resolved) - 1} more)" if len(resolved) > 1 else "")
            + "; pass calibration=[batch, ...] (the same batches the search uses), or use rounding='rtn'"
        )
    from infoq_hf.sensitivity.probe import find_blocks

    report = GPTQReport()
    was_training = model.training
    model.eval()
    resolved, originals = pack_embeddings(model, resolved, scheme)

    def round_and_pack(accumulators: dict[str, _HessianAccumulator]) -> None:
        for name, acc in accumulators.items():
            layer, bits = acc.layer, resolved[name]
            qw = quantize_layer_gptq(name, layer, acc.hessian(), scheme.weight_scheme(layer, bits.w_bits), options)
            acc.sum = None  # free the Hessian
            # The module (bias, input range) is built as for RTN; GPTQ's codes then replace the RTN ones.
            packed = packed_layer(name, layer, bits, scheme, act_ranges)
            packed.set_quantized(qw, name)
            originals[name] = layer
            set_submodule(model, name, packed)
            report.layers += 1

    try:
        from tqdm.auto import tqdm

        layer_names = list(resolved)
        stages = _trace_stages(model, find_blocks(model), layer_names, batches[0], forward)
        with tqdm(total=_stage_count(stages), desc="GPTQ", unit="block", disable=not progress) as bar:
            for accs in _hessian_stages(model, stages, layer_names, batches, forward, report, bar):
                round_and_pack(accs)
    except BaseException:
        for name, layer in originals.items():
            set_submodule(model, name, layer)
        raise
    finally:
        model.train(was_training)
    report.wall_s = time.perf_counter() - t0
    return report


class GPTQCandidates:
    """GPTQ's rounding of layers at several widths, each from the float model's own inputs, and the
    output error it leaves relative to round-to-nearest's. What the allocation needs to know the
    rounding it will be packed with: the error ratios scale the sensitivity costs
    (`sensitivity.rounding_costs.with_gptq_costs`) and the rounded weights stand in for RTN's in the
    whole-model refinement.

    `error_ratio[name][bits]` = tr(D_gptq H D_gptq^T) / tr(D_rtn H D_rtn^T), D = Q(W) - W, H the layer's
    input Hessian (per conv group, summed). The final packing rounds block by block on inputs from the
    already quantized blocks, so its codes differ slightly from these (float-input) ones."""

    def __init__(
        self,
        error_ratio: dict[str, dict[int, float]],
        weights: dict[tuple[str, int], QuantizedWeight],
        transposed: set[str],
        meta: dict,
    ):
        self.error_ratio, self._weights, self._transposed, self.meta = error_ratio, weights, transposed, meta

    def has_weights(self) -> bool:
        return bool(self._weights)

    def weight(self, name: str, bits: int) -> torch.Tensor:
        """The dequantized GPTQ weight of `name` at `bits`, shaped and oriented as the layer stores it."""
        try:
            qw = self._weights[(name, bits)]
        except KeyError:
            raise KeyError(
                f"no GPTQ rounding of layer {name!r} at {bits} bits was computed; computed widths: "
                f"{sorted(b for n, b in self._weights if n == name)}"
            ) from None
        w = qw.dequantize()
        return w.t() if name in self._transposed else w


def _output_error(delta: torch.Tensor, hessian: torch.Tensor) -> float:
    """tr(D H D^T) summed over conv groups; `delta` [out, ...] oriented, `hessian` [groups, d, d]."""
    groups = hessian.shape[0]
    d = delta.reshape(groups, delta.shape[0] // groups, -1).double()
    return float(((d @ hessian.double()) * d).sum())


@torch.no_grad()
def gptq_candidates(
    model: nn.Module,
    widths: Mapping[str, Iterable[int]],
    calibration: Iterable,
    *,
    scheme,
    options: GPTQOptions | Mapping | None = None,
    forward: Callable | None = None,
    keep_weights: bool = True,
    prefix_bits: Mapping[str, int] | None = None,
    progress: bool = True,
) -> GPTQCandidates:
    """GPTQ-round every layer of `widths` ({name: [bits, ...]}) at each of its widths, on Hessians of the
    model's inputs collected one block at a time (the model is not changed). `scheme`: the
    `PackingScheme` the model will be packed with. `keep_weights=False` keeps only the error ratios
    (the rounded weights take about one byte per weight and width). Embeddings are packed with round to
    nearest (see `gptq_quantize_model`): ratio 1, RTN's weights.

    `prefix_bits` ({name: bits}, each among the layer's widths): the blocks before each one run with
    their layers at these widths (GPTQ's rounding), so every layer is rounded on the inputs sequential
    packing gives it when the configuration is close to `prefix_bits` (the packing compensates the
    error of the layers before; rounding on float inputs does not). None: the float model's inputs."""
    from tqdm.auto import tqdm

    from infoq_hf.sensitivity.probe import find_blocks
    from infoq_hf.quant.apply import default_forward
    from infoq_hf.quant.modules import oriented_weight
    from infoq_hf.quant.quantizer import fake_quantize_weight

    t0 = time.perf_counter()
    options = GPTQOptions.from_dict(options)
    forward = forward or default_forward
    batches = None if calibration is None else list(calibration)
    if not batches:
        raise ValueError(
            "GPTQ-aware costs need calibration batches (the ones GPTQ will round with); pass calibration=[batch, ...]"
        )
    widths = {n: sorted({int(b) for b in bs}) for n, bs in widths.items()}
    prefix_bits = dict(prefix_bits or {})
    wrong = {n: b for n, b in prefix_bits.items() if n not in widths or int(b) not in widths[n]}
    if wrong:
        raise ValueError(
            f"prefix_bits {dict(list(wrong.items())[:3])} name layers or widths the candidates do not "
            "compute; give each layer one of its own widths"
        )
    ratios: dict[str, dict[int, float]] = {}
    weights: dict[tuple[str, int], QuantizedWeight] = {}
    float_weights: dict[str, torch.Tensor] = {}  # layers running at their prefix width, to put back
    layer_names = [n for n in widths if not isinstance(model.get_submodule(n), nn.Embedding)]
    transposed = {n for n in layer_names if HFConv1D is not None and isinstance(model.get_submodule(n), HFConv1D)}
    report = GPTQReport()
    was_training = model.training
    model.eval()
    try:
        for name in [n for n in widths if n not in layer_names]:
            layer = model.get_submodule(name)
            ratios[name] = {b: 1.0 for b in widths[name]}
            rounded = {
                b: quantize_weight(layer.weight.detach().float(), scheme.weight_scheme(layer, b), name)
                for b in widths[name]
                if keep_weights or prefix_bits.get(name) == b
            }
            if keep_weights:
                weights.update({(name, b): qw for b, qw in rounded.items()})
            if name in prefix_bits:  # packing rounds embeddings first: the blocks see the rounded rows
                float_weights[name] = layer.weight.data.clone()
                layer.weight.data.copy_(rounded[prefix_bits[name]].dequantize())
        stages = _trace_stages(model, find_blocks(model), layer_names, batches[0], forward)
        inputs = "float inputs" if not prefix_bits else f"inputs of {_describe_widths(prefix_bits)}"
        with tqdm(
            total=_stage_count(stages), desc=f"GPTQ candidates on {inputs}", unit="block", disable=not progress
        ) as bar:
            for accs in _hessian_stages(model, stages, layer_names, batches, forward, report, bar):
                for name, acc in accs.items():
                    layer, hessian = acc.layer, acc.hessian()
                    acc.sum = None
                    w = oriented_weight(layer).detach().float()  # [out, in...], as GPTQ's codes
                    ratios[name] = {}
                    for b in widths[name]:
                        ws = scheme.weight_scheme(layer, b)
                        rtn = fake_quantize_weight(w, ws, name)
                        qw = quantize_layer_gptq(name, layer, hessian, ws, options)
                        e_rtn = _output_error(rtn - w, hessian)
                        e_gptq = _output_error(qw.dequantize() - w, hessian)
                        ratios[name][b] = e_gptq / e_rtn if e_rtn > 0 else 1.0
                        if keep_weights or prefix_bits.get(name) == b:
                            weights[(name, b)] = qw
                    if name in prefix_bits:  # the next stages' inputs see this rounding (set after all widths)
                        rounded = weights[(name, prefix_bits[name])].dequantize()
                        float_weights[name] = layer.weight.data.clone()
                        layer.weight.data.copy_(rounded.t() if name in transposed else rounded.view_as(w))
                        if not keep_weights:
                            del weights[(name, prefix_bits[name])]
    finally:
        for name, weight in float_weights.items():
            model.get_submodule(name).weight.data.copy_(weight)
        model.train(was_training)
    meta = {
        "calibration_batches": len(batches),
        "options": options.to_dict(),
        "inputs": "float" if not prefix_bits else f"prefix at {_describe_widths(prefix_bits)}",
        "wall_s": round(time.perf_counter() - t0, 3),
        "full_passes": report.full_passes,
    }
    return GPTQCandidates(ratios, weights, transposed, meta)


def _describe_widths(bits: Mapping[str, int]) -> str:
    counts = collections.Counter(bits.values())
    return ", ".join(f"{b} bits x{counts[b]}" for b in sorted(counts))


def _stage_count(stages) -> int:
    return sum(len(names) if kind == "chain" else 1 for kind, names in stages)


def _hessian_stages(
    model: nn.Module, stages, layer_names: list[str], batches: list, forward: Callable, report: GPTQReport, bar
):
    """Yield {layer name: accumulated Hessian} stage by stage (one block's layers, or a run of layers
    outside any block), in execution order. Each stage's inputs come from the model as the consumer
    left it after the previous stages: quantized blocks for GPTQ, the float model when nothing changes."""

    def accumulate(names: list[str]) -> tuple[dict[str, _HessianAccumulator], list]:
        memo: dict = {}
        accs = {n: _HessianAccumulator(n, model.get_submodule(n), memo) for n in names}
        return accs, [accs[n].layer.register_forward_pre_hook(accs[n]) for n in names]

    for kind, names in stages:
        if kind == "layers":
            accs, hooks = accumulate(names)
            try:
                for batch in batches:
                    forward(model, batch)
            finally:
                for h in hooks:
                    h.remove()
            report.full_passes += 1
            yield accs
            bar.update(1)
            continue
        inputs = _capture_inputs(model, names[0], batches, forward)
        report.full_passes += 1
        for k, block_name in enumerate(names):
            report.max_activation_bytes = max(report.max_activation_bytes, _nbytes(inputs, set()))
            in_block = [n for n in layer_names if _owner_block(n, [block_name])]
            if in_block:
                block = model.get_submodule(block_name)
                accs, hooks = accumulate(in_block)
                try:
                    for args, kwargs in inputs:
                        block(*args, **kwargs)
                finally:
                    for h in hooks:
                        h.remove()
                yield accs
            block = model.get_submodule(block_name)  # the block may itself be a packed layer now
            if k + 1 < len(names):  # the next block's inputs, from this block as the consumer left it
                for j, (args, kwargs) in enumerate(inputs):
                    inputs[j] = ((_first(block(*args, **kwargs)),) + tuple(args[1:]), kwargs)
            report.blocks += 1
            bar.update(1)
        del inputs


def _capture_inputs(model: nn.Module, block_name: str, batches: list, forward: Callable) -> list:
    """The (args, kwargs) of the block's call for every batch; each forward pass stops at the block."""
    captured: list = []

    def grab(module, args, kwargs):
        captured.append((tuple(args), _replayable(dict(kwargs))))
        raise _StopForward

    hook = model.get_submodule(block_name).register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for batch in batches:
            try:
                forward(model, batch)
            except _StopForward:
                pass
    finally:
        hook.remove()
    if len(captured) != len(batches):
        raise ValueError(
            f"block {block_name!r} was reached by {len(captured)} of {len(batches)} calibration "
            "batches; check the batches and the forward function"
        )
    return captured


__all__ = [
    "GPTQCandidates",
    "GPTQOptions",
    "GPTQReport",
    "gptq_candidates",
    "gptq_quantize",
    "gptq_quantize_model",
    "quantize_layer_gptq",
]
