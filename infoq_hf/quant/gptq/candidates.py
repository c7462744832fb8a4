"""GPTQ's rounding of every layer at every candidate width, from one calibration walk, for the allocation.

The allocation needs to know the rounding the model will be packed with: the ratio of the output
error GPTQ leaves to round-to-nearest's rescales the sensitivity costs
(`sensitivity.rounding_costs.with_gptq_costs`), and the rounded weights stand in for RTN's in the
whole-model refinement. Each block's Hessians are collected once (`walk.hessian_stages`), each layer's
Hessian factored once and all its widths swept together (`algorithm.quantize_layer_gptq_widths`), and
the rounded weights kept compactly on CPU: codes packed at their width plus the scales.

Under `accelerate` every process walks the model (the walk is cheap next to the sweeps), the layers of
each block are split over the processes by their sweep cost, and the results gathered after each
block, so every process ends with the whole, identical candidates.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
import torch.nn as nn

from ...policy import LayerBits
from ..apply import default_forward, overwrite_weight, packed_layer, set_submodule
from ..modules import HFConv1D
from ..packing import pack, unpack
from ..quantizer import QuantizedWeight, WeightScheme, fake_quantize_weight, quantize_weight
from .algorithm import GPTQOptions, quantize_layer_gptq_widths_with_errors
from .hessian import output_error
from .walk import GPTQReport, hessian_stages, model_blocks, onloaded, stage_count, stored_weight, trace_stages


@dataclass(frozen=True)
class PackedCandidate:
    """One layer's rounding at one width, held compactly: the codes packed at their width (as the
    checkpoint stores them), the float32 scales and the uint8 zero points."""

    packed: torch.Tensor
    scale: torch.Tensor
    zero_point: torch.Tensor | None
    scheme: WeightScheme
    shape: tuple[int, ...]

    @classmethod
    def of(cls, qw: QuantizedWeight) -> PackedCandidate:
        zero = None if qw.zero_point is None else qw.zero_point.cpu()
        return cls(pack(qw.codes.cpu(), qw.scheme.bits), qw.scale.cpu(), zero, qw.scheme, tuple(qw.shape))

    def quantized(self) -> QuantizedWeight:
        codes = unpack(self.packed, self.scheme.bits, math.prod(self.shape)).reshape(self.shape[0], -1)
        return QuantizedWeight(codes, self.scale, self.zero_point, self.scheme, self.shape)

    def nbytes(self) -> int:
        parts = [self.packed, self.scale] + ([] if self.zero_point is None else [self.zero_point])
        return sum(t.numel() * t.element_size() for t in parts)


class GPTQCandidates:
    """GPTQ's rounding of layers at several widths and the output error it leaves relative to
    round-to-nearest's.

    `error_ratio[name][bits]` = tr(D_gptq H D_gptq^T) / tr(D_rtn H D_rtn^T), D = Q(W) - W, H the layer's
    input Hessian (per conv group, summed). Rounded with `prefix_bits`, the candidates at those widths
    are the codes sequential GPTQ (`gptq_quantize_model`) gives that configuration; `quantize_model(...,
    candidates=)` packs any configuration from them."""

    def __init__(
        self,
        error_ratio: dict[str, dict[int, float]],
        weights: Mapping[tuple[str, int], PackedCandidate | QuantizedWeight],
        transposed: set[str],
        meta: dict,
    ):
        self.error_ratio, self.transposed, self.meta = error_ratio, set(transposed), meta
        self.rounded = {k: w if isinstance(w, PackedCandidate) else PackedCandidate.of(w) for k, w in weights.items()}

    def has_weights(self) -> bool:
        return bool(self.rounded)

    def quantized(self, name: str, bits: int) -> QuantizedWeight:
        """GPTQ's codes and scales of `name` at `bits` ([out, in] or the conv's shape, as GPTQ rounds)."""
        try:
            return self.rounded[(name, bits)].quantized()
        except KeyError:
            raise KeyError(
                f"no GPTQ rounding of layer {name!r} at {bits} bits was computed; computed widths: "
                f"{sorted(b for n, b in self.rounded if n == name)}"
            ) from None

    def weight(self, name: str, bits: int) -> torch.Tensor:
        """The dequantized GPTQ weight of `name` at `bits`, shaped and oriented as the layer stores it."""
        w = self.quantized(name, bits).dequantize()
        return w.t() if name in self.transposed else w

    def nbytes(self) -> int:
        """Bytes the rounded weights take (codes, scales and zero points)."""
        return sum(c.nbytes() for c in self.rounded.values())


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
    accelerator=None,
) -> GPTQCandidates:
    """GPTQ-round every layer of `widths` ({name: [bits, ...]}) at each of its widths, on Hessians of the
    model's inputs collected one block at a time (the model is not changed). `scheme`: the
    `PackingScheme` the model will be packed with. `keep_weights=False` keeps only the error ratios.
    Embeddings are packed with round to nearest (see `gptq_quantize_model`): ratio 1, RTN's weights.

    `prefix_bits` ({name: bits}, each among the layer's widths): the blocks before each one run with
    their layers at these widths (GPTQ's rounding), so every layer is rounded on the inputs sequential
    packing gives it when the configuration is close to `prefix_bits` (the packing compensates the
    error of the layers before; rounding on float inputs does not). None: the float model's inputs.
    `accelerator` (an `accelerate.Accelerator`): the layers' sweeps are split over its processes. A model
    dispatched with accelerate's CPU offload hooks is read (and, for `prefix_bits`, changed and put back)
    through the hooks' weight copies."""
    from tqdm.auto import tqdm

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
    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    ratios: dict[str, dict[int, float]] = {}
    weights: dict[tuple[str, int], PackedCandidate] = {}
    float_weights: dict[str, torch.Tensor] = {}  # embeddings running at their prefix width, to put back
    float_layers: dict[str, nn.Module] = {}  # layers replaced by their packed prefix width, to put back
    layer_names = [n for n in widths if not isinstance(model.get_submodule(n), nn.Embedding)]
    transposed = {n for n in layer_names if HFConv1D is not None and isinstance(model.get_submodule(n), HFConv1D)}
    report = GPTQReport()
    swept = 0  # layers this process swept
    was_training = model.training
    model.eval()

    def run_at_prefix(name: str, layer: nn.Module, rounded: torch.Tensor) -> None:
        stored = stored_weight(layer)
        float_weights[name] = stored.clone()
        overwrite_weight(stored, rounded.t() if name in transposed else rounded.view_as(stored))

    def run_packed(name: str, layer: nn.Module, candidate: PackedCandidate) -> None:
        # the packed layer sequential GPTQ puts there, so later blocks see the same numbers in every dtype
        # (in bfloat16 its forward rounds differently from the dequantized weight cast to bfloat16)
        with onloaded(layer):
            packed = packed_layer(name, layer, LayerBits(candidate.scheme.bits), scheme, None)
            packed.set_quantized(candidate.quantized(), name)
        float_layers[name] = layer
        set_submodule(model, name, packed)

    try:
        for name in [n for n in widths if n not in layer_names]:
            layer = model.get_submodule(name)
            ratios[name] = {b: 1.0 for b in widths[name]}
            rounded = {
                b: quantize_weight(stored_weight(layer).float(), scheme.weight_scheme(layer, b), name)
                for b in widths[name]
                if keep_weights or prefix_bits.get(name) == b
            }
            if keep_weights:
                weights.update({(name, b): PackedCandidate.of(qw) for b, qw in rounded.items()})
            if name in prefix_bits:  # packing rounds embeddings first: the blocks see the rounded rows
                run_at_prefix(name, layer, rounded[prefix_bits[name]].dequantize())
        stages = trace_stages(model, model_blocks(model), layer_names, batches[0], forward)
        inputs = "float inputs" if not prefix_bits else f"inputs of {_describe_widths(prefix_bits)}"
        with tqdm(
            total=stage_count(stages),
            desc=f"GPTQ candidates on {inputs}",
            unit="block",
            disable=not progress or rank != 0,
        ) as bar:
            for accs in hessian_stages(model, stages, layer_names, batches, forward, report, bar):
                mine = set(_share(accs, rank, world))
                swept += len(mine)
                results = {}
                for name, acc in accs.items():
                    hessian = acc.hessian() if name in mine else None
                    acc.sum = None  # free the Hessian
                    if hessian is not None:
                        kept = set(widths[name]) if keep_weights else {prefix_bits.get(name)}
                        results[name] = _round_layer(
                            name, acc.layer, hessian, widths[name], kept, scheme, options, name in transposed
                        )
                if world > 1:
                    from accelerate.utils import gather_object

                    results = {n: r for part in gather_object([results]) for n, r in part.items()}
                for name in accs:  # in the stage's order, whichever process rounded the layer
                    ratios[name], rounded = results[name]
                    weights.update({(name, b): c for b, c in rounded.items() if keep_weights})
                    if name in prefix_bits:  # the next stages' inputs see this rounding
                        run_packed(name, accs[name].layer, rounded[prefix_bits[name]])
    finally:
        for name, layer in float_layers.items():
            set_submodule(model, name, layer)
        for name, weight in float_weights.items():
            overwrite_weight(stored_weight(model.get_submodule(name)), weight)
        model.train(was_training)
    meta = {
        "calibration_batches": len(batches),
        "options": options.to_dict(),
        "inputs": "float" if not prefix_bits else f"prefix at {_describe_widths(prefix_bits)}",
        "prefix_bits": prefix_bits or None,
        "scheme": scheme.codes_settings(),
        "wall_s": round(time.perf_counter() - t0, 3),
        "full_passes": report.full_passes,
    }
    if world > 1:
        from accelerate.utils import gather_object

        meta["layers_swept"] = gather_object([swept])  # per process
    return GPTQCandidates(ratios, weights, transposed, meta)


def _round_layer(name, layer, hessian, widths, kept, scheme, options, transposed):
    """({bits: error ratio}, {bits: PackedCandidate} for the widths in `kept`) of one layer."""
    stored = stored_weight(layer)
    w = (stored.t() if transposed else stored).float()  # [out, in...], as GPTQ's codes
    schemes = [scheme.weight_scheme(layer, b) for b in widths]
    ratios, rounded = {}, {}
    h32 = hessian.float()  # output_error's precision, converted once for every width
    rounded_widths = quantize_layer_gptq_widths_with_errors(name, layer, hessian, schemes, options, stored)
    for b, ws, (qw, e_gptq) in zip(widths, schemes, rounded_widths):  # GPTQ's error comes from its sweep
        e_rtn = output_error(fake_quantize_weight(w, ws, name) - w, h32)
        ratios[b] = e_gptq / e_rtn if e_rtn > 0 else 1.0
        if b in kept:
            rounded[b] = PackedCandidate.of(qw)
    return ratios, rounded


def _share(accs: Mapping, rank: int, world: int) -> list[str]:
    """The layers of a stage this process sweeps: longest sweeps first, each to the least loaded process
    (the same answer on every process)."""
    if world == 1:
        return list(accs)
    shapes = {n: a.layer.weight.shape for n, a in accs.items()}  # (meta shapes of offloaded layers too)
    cost = {n: s.numel() * (s.numel() // s[0]) for n, s in shapes.items()}
    load, mine = [0] * world, []
    for name in sorted(accs, key=lambda n: -cost[n]):
        p = min(range(world), key=lambda r: load[r])
        load[p] += cost[name]
        if p == rank:
            mine.append(name)
    return mine


def _describe_widths(bits: Mapping[str, int]) -> str:
    counts = collections.Counter(bits.values())
    return ", ".join(f"{b} bits x{counts[b]}" for b in sorted(counts))


__all__ = ["GPTQCandidates", "PackedCandidate", "gptq_candidates"]
