"""The calibration walk GPTQ rounds along: the model's layers' input Hessians, block by block.

The blocks are those of `quant.apply.find_blocks` (children of the outermost
Sequential/ModuleList: decoder layers, CNN stages). One traced forward pass on the first batch finds
the chains of blocks that feed each other directly (block k+1 receives block k's output as its first
argument). For each chain the inputs of its first block are captured (a forward pre-hook stops the
forward pass), then the chain runs block by block: the Hessians of the block's layers come from the
block's inputs, the consumer (sequential GPTQ, the candidates) does what it does with them (it may
replace the block's layers), and the block is rerun, as the consumer left it, to give the next block's
inputs; keyword arguments (attention mask, position embeddings) are replayed, key/value caches dropped.
Only one block's inputs are held at a time. Policy layers outside any chain (a head after pooling, a
model without a block stack) get their Hessians from full forward passes of the model, all such
consecutive layers in one pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..apply import find_blocks
from .hessian import HessianAccumulator


class StopForward(Exception):
    """Raised by a hook to end a forward pass once the inputs it needs are captured."""


@dataclass
class GPTQReport:
    """What a model-level GPTQ pass did: layers rounded, blocks run sequentially, full forward passes,
    the largest activation buffer held (bytes of one block's inputs over all calibration batches), wall time."""

    layers: int = 0
    blocks: int = 0
    full_passes: int = 0
    max_activation_bytes: int = 0
    wall_s: float = 0.0


def first_output(out):
    return out[0] if isinstance(out, (tuple, list)) else out


def nbytes(obj, seen: set) -> int:
    """Bytes of the tensors in a nest of tuples / lists / dicts, each tensor counted once."""
    if isinstance(obj, torch.Tensor):
        if id(obj) in seen:
            return 0
        seen.add(id(obj))
        return obj.numel() * obj.element_size()
    if isinstance(obj, (tuple, list)):
        return sum(nbytes(o, seen) for o in obj)
    if isinstance(obj, dict):
        return sum(nbytes(o, seen) for o in obj.values())
    return 0


def replayable(kwargs: dict) -> dict:
    """A block's keyword arguments safe to replay: key/value caches would grow on every replay."""
    try:
        from transformers.cache_utils import Cache
    except ImportError:  # transformers is optional
        Cache = ()
    kwargs = {k: (None if isinstance(v, Cache) else v) for k, v in kwargs.items()}
    if "use_cache" in kwargs:
        kwargs["use_cache"] = False
    return kwargs


def stored_weight(layer: nn.Module) -> torch.Tensor:
    """The tensor that holds a layer's weight: `layer.weight`, or for a layer offloaded by accelerate's
    hooks (`cpu_offload`, `dispatch_model` with an offload map; the parameter then sits on the meta
    device) the hook's CPU copy, which reads and writes in place like the parameter."""
    weight = layer.weight
    if weight.device.type != "meta":
        return weight.data
    weights_map = getattr(getattr(layer, "_hf_hook", None), "weights_map", None)
    if weights_map is None:
        raise ValueError(
            f"the weight of {type(layer).__name__} is on the meta device and no accelerate offload "
            "hook holds it; load the model's weights (or dispatch it with accelerate) before GPTQ"
        )
    return weights_map["weight"].data


@contextlib.contextmanager
def onloaded(layer: nn.Module):
    """The layer's parameters on its execution device for the duration, when accelerate's hooks offload
    them (as its forward pass would), offloaded again after."""
    hook = getattr(layer, "_hf_hook", None)
    if hook is None or not getattr(hook, "offload", False):
        yield layer
        return
    hook.pre_forward(layer)
    try:
        yield layer
    finally:
        hook.post_forward(layer, None)


def owner_block(name: str, blocks: Iterable[str]) -> str | None:
    for b in blocks:
        if name == b or name.startswith(b + "."):
            return b
    return None


def model_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """The model's blocks, as the search and the refinement see them."""
    return find_blocks(model)


def trace_stages(model, blocks: dict[str, nn.Module], layer_names: list[str], batch, forward):
    """Stages in execution order: ("chain", [block, ...]) for blocks feeding each other directly,
    ("layers", [name, ...]) for consecutive policy layers outside chains. Blocks that run more than
    once per forward pass cannot be replayed; their layers are treated as outside layers."""
    blocks = dict(blocks)
    while True:
        outside = [n for n in layer_names if owner_block(n, blocks) is None]
        events: list[tuple[str, str, object]] = []  # the tensors are kept alive, so `is` is a safe test
        hooks = []
        for b, m in blocks.items():
            hooks.append(
                m.register_forward_pre_hook(
                    lambda mod, args, b=b, events=events: events.append(("start", b, args[0] if args else None))
                )
            )
            hooks.append(
                m.register_forward_hook(
                    lambda mod, args, out, b=b, events=events: events.append(("end", b, first_output(out)))
                )
            )
        for n in outside:
            hooks.append(
                model.get_submodule(n).register_forward_pre_hook(
                    lambda mod, args, n=n, events=events: events.append(("layer", n, None))
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
            holds = [i for i, b in enumerate(names) if any(owner_block(n, [b]) for n in layer_names)]
            if not holds:
                continue
            names = names[holds[0] : holds[-1] + 1]
        trimmed.append((kind, names))
    return trimmed


def stage_count(stages) -> int:
    return sum(len(names) if kind == "chain" else 1 for kind, names in stages)


def hessian_stages(
    model: nn.Module, stages, layer_names: list[str], batches: list, forward: Callable, report: GPTQReport, bar
) -> Iterator[dict[str, HessianAccumulator]]:
    """Yield {layer name: accumulated Hessian} stage by stage (one block's layers, or a run of layers
    outside any block), in execution order. Each stage's inputs come from the model as the consumer
    left it after the previous stages: quantized blocks for GPTQ, the float model when nothing changes."""

    def accumulate(names: list[str]) -> tuple[dict[str, HessianAccumulator], list]:
        memo: dict = {}
        accs = {n: HessianAccumulator(n, model.get_submodule(n), memo) for n in names}
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
        inputs = capture_inputs(model, names[0], batches, forward)
        report.full_passes += 1
        for k, block_name in enumerate(names):
            report.max_activation_bytes = max(report.max_activation_bytes, nbytes(inputs, set()))
            in_block = [n for n in layer_names if owner_block(n, [block_name])]
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
                    inputs[j] = ((first_output(block(*args, **kwargs)),) + tuple(args[1:]), kwargs)
            report.blocks += 1
            bar.update(1)
        del inputs


def capture_inputs(model: nn.Module, block_name: str, batches: list, forward: Callable) -> list:
    """The (args, kwargs) of the block's call for every batch; each forward pass stops at the block."""
    captured: list = []

    def grab(module, args, kwargs):
        captured.append((tuple(args), replayable(dict(kwargs))))
        raise StopForward

    hook = model.get_submodule(block_name).register_forward_pre_hook(grab, with_kwargs=True)
    try:
        for batch in batches:
            try:
                forward(model, batch)
            except StopForward:
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
    "GPTQReport",
    "StopForward",
    "capture_inputs",
    "first_output",
    "hessian_stages",
    "model_blocks",
    "nbytes",
    "onloaded",
    "owner_block",
    "replayable",
    "stage_count",
    "stored_weight",
    "trace_stages",
]
