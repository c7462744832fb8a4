"""Sequential GPTQ over a whole model: each block's layers are rounded on the inputs the already
quantized blocks before it give (`walk.hessian_stages`), packed, and the block rerun for the next."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn as nn

from ..apply import default_forward, pack_embeddings, packed_layer, packing_scheme_for, resolve_policy
from .algorithm import GPTQOptions, quantize_layer_gptq
from .hessian import HessianAccumulator
from .walk import GPTQReport, hessian_stages, model_blocks, onloaded, stage_count, trace_stages


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
    On an error the float layers are put back. A model dispatched with accelerate's offload hooks keeps
    one layer's float weights resident at a time. Returns a `GPTQReport`."""
    from tqdm.auto import tqdm

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
    report = GPTQReport()
    was_training = model.training
    model.eval()
    resolved, originals = pack_embeddings(model, resolved, scheme)

    def round_and_pack(accumulators: dict[str, HessianAccumulator]) -> None:
        for name, acc in accumulators.items():
            layer, bits = acc.layer, resolved[name]
            with onloaded(layer):  # an offloaded layer's weights are resident while it is rounded and packed
                qw = quantize_layer_gptq(name, layer, acc.hessian(), scheme.weight_scheme(layer, bits.w_bits), options)
                acc.sum = None  # free the Hessian
                # The module (bias, input range) is built as for RTN; GPTQ's codes then replace the RTN ones.
                packed = packed_layer(name, layer, bits, scheme, act_ranges)
                packed.set_quantized(qw, name)
            originals[name] = layer
            model.set_submodule(name, packed)
            report.layers += 1

    try:
        layer_names = list(resolved)
        stages = trace_stages(model, model_blocks(model), layer_names, batches[0], forward)
        with tqdm(total=stage_count(stages), desc="GPTQ", unit="block", disable=not progress) as bar:
            for accs in hessian_stages(model, stages, layer_names, batches, forward, report, bar):
                round_and_pack(accs)
    except BaseException:
        for name, layer in originals.items():
            model.set_submodule(name, layer)
        raise
    finally:
        model.train(was_training)
    report.wall_s = time.perf_counter() - t0
    return report


__all__ = ["gptq_quantize_model"]
