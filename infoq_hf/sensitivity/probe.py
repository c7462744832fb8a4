"""Running a model many times with one layer perturbed, cheaply.

`Prober` owns three things the search methods share:
- the 8-bit reference: every probed layer's weight replaced by its 8-bit
  fake-quantized version (float weights restored on exit);
- perturbations: one layer's weight at b bits, or its input activation at b bits;
- the prefix cache. A probe of layer l cannot change anything computed before l,
  so blocks of a sequential stack that finish before l runs need not be rerun:
  their reference outputs are recorded once and replayed. Blocks are the children
  of the model's outermost `nn.Sequential` / `nn.ModuleList` containers
  (transformer decoder layers, ResNet / MobileNet blocks). A block is replayed
  only if it runs exactly once per forward pass and finishes before l starts;
  everything else (embeddings, heads, graphs that are not stacks) runs in full.
  A self-check replays every block once at start-up and disables the cache if
  outputs are not bit-identical to the full pass.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable

import torch
import torch.nn as nn

from ..quant.apply import find_blocks, overwrite_weight
from ..quant.modules import fake_quantize_layer
from ..quant.quantizer import WeightScheme, activation_qparams, fake_quantize_activation

logger = logging.getLogger(__name__)
REFERENCE_BITS = 8


def _map_tree(fn, obj):
    """Apply `fn` to every tensor of a nested output (tuples, named tuples, lists, dicts)."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_map_tree(fn, o) for o in obj))
    if isinstance(obj, (tuple, list)):
        return type(obj)(_map_tree(fn, o) for o in obj)
    if isinstance(obj, dict):
        return type(obj)({k: _map_tree(fn, v) for k, v in obj.items()})
    return obj


def _clone_tree(obj):
    return _map_tree(torch.Tensor.clone, obj)


def detach_tree(obj):
    """`obj` (a tensor, or tuples/lists/dicts of them) with every tensor detached."""
    return _map_tree(torch.Tensor.detach, obj)


class Replay(nn.Module):
    """Stands in for a block: returns its recorded output for the current batch (`counter[0]`)."""

    def __init__(self, outputs: list, counter: list, clone: bool = False):
        super().__init__()
        self.outputs, self.counter = outputs, counter
        # Only an output that feeds real computation may be modified in place downstream: copy that one.
        self.copy = _clone_tree if clone else (lambda x: x)

    def forward(self, *args, **kwargs):
        return self.copy(self.outputs[self.counter[0]])


@contextlib.contextmanager
def replaced_modules(model: nn.Module, replacements: dict[str, nn.Module]):
    """Swap submodules in their parents for the duration, then put back exactly the original objects.

    Swapping (rather than assigning `module.forward`) leaves the original modules untouched, so hooks
    that wrap their forward (accelerate's `AlignDevicesHook` on a `device_map` model) survive."""
    originals = []
    try:
        for name, new in replacements.items():
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            originals.append((parent, child, getattr(parent, child)))
            setattr(parent, child, new)
        yield
    finally:
        for parent, child, module in reversed(originals):
            setattr(parent, child, module)


class Prober:
    """The reference model plus the means to run it with one layer perturbed."""

    def __init__(
        self,
        model: nn.Module,
        layers: dict[str, nn.Module],
        batches: list,
        forward: Callable,
        schemes: Callable[[str, int], WeightScheme],
        use_prefix_cache: bool = True,
    ):
        self.model, self.layers, self.batches, self.forward = model, layers, batches, forward
        self.schemes = schemes
        self.use_prefix_cache = use_prefix_cache
        self.layer_evals = 0  # quantizable-layer forward calls, summed over batches
        self._float_weights: dict[str, torch.Tensor] = {}  # the one copy kept: the model holds the reference
        self.act_ranges: dict[str, tuple[float, float]] = {}
        self._act_bits: dict[str, int] = {}
        self._hooks = []
        self.cache: dict[str, list] = {}
        self.first_block_for: dict[str, int] = {}  # layer -> index of the first block it may not skip
        self.block_names: list[str] = []

    # ------------------------------------------------------------------ reference
    def __enter__(self):
        self.model.eval()
        for name, layer in self.layers.items():
            self._float_weights[name] = layer.weight.data.clone()
            overwrite_weight(layer.weight.data, self._reference_weight(name))
        for layer in self.layers.values():
            self._hooks.append(layer.register_forward_hook(self._count_eval))
        return self

    def __exit__(self, *exc):
        for h in self._hooks:
            h.remove()
        for name, layer in self.layers.items():
            overwrite_weight(layer.weight.data, self._float_weights[name])
        self.cache.clear()
        return False

    def _reference_weight(self, name: str) -> torch.Tensor:
        layer = self.layers[name]
        return fake_quantize_layer(layer, self._float_weights[name], self.schemes(name, REFERENCE_BITS), name)

    def _count_eval(self, module, args, out):
        self.layer_evals += 1  # a replayed block is swapped out, so its layers' hooks do not fire

    # ------------------------------------------------------------------ prefix cache
    @torch.no_grad()
    def build_prefix_cache(self) -> None:
        """Record block outputs and execution order in one reference pass; verify replay is exact."""
        if not self.use_prefix_cache:
            return
        blocks = find_blocks(self.model)
        order: list[tuple[str, str]] = []  # ("start"|"end", name) events
        outputs: dict[str, list] = {n: [] for n in blocks}
        calls: dict[str, int] = {n: 0 for n in blocks}
        hooks = []

        def block_end(name):
            def hook(module, args, out):  # must return None: a returned value would replace the output
                order.append(("end", name))
                outputs[name].append(detach_tree(out))
                calls[name] += 1

            return hook

        def layer_start(name):
            def hook(module, args):
                order.append(("start", "layer:" + name))

            return hook

        for n, b in blocks.items():
            hooks.append(b.register_forward_hook(block_end(n)))
        for n, layer in self.layers.items():
            hooks.append(layer.register_forward_pre_hook(layer_start(n)))
        reference = []  # a digest of each batch's output: the whole outputs would hold every batch's logits
        try:
            for batch in self.batches:
                order.clear()  # keep the events of the last pass only
                reference.append(_tree_digest(self.forward(self.model, batch)))
        finally:
            for h in hooks:
                h.remove()
        once = {n for n in blocks if calls[n] == len(self.batches)}
        # Order of events in the (last) pass decides which blocks end before each layer starts.
        ended: list[str] = []
        for kind, n in order:
            if kind == "end" and n in once and n not in ended:
                ended.append(n)
            elif kind == "start" and n.startswith("layer:"):
                self.first_block_for.setdefault(n[6:], len(ended))
        self.block_names = ended
        self.cache = {n: outputs[n] for n in ended}
        if not self._replay_is_exact(reference):
            logger.warning("prefix cache disabled: replaying block outputs did not reproduce the model exactly")
            self.cache, self.block_names, self.first_block_for = {}, [], {}

    def _replay_is_exact(self, reference: list[bytes]) -> bool:
        """Whether replaying every cached block reproduces each batch's output bit for bit (`_tree_digest`)."""
        if not self.block_names:
            return True
        with self.skip_blocks(len(self.block_names)) as counter:
            for i, (batch, ref) in enumerate(zip(self.batches, reference)):
                counter[0] = i
                if _tree_digest(self.forward(self.model, batch)) != ref:
                    return False
        return True

    @contextlib.contextmanager
    def skip_blocks(self, count: int, batch_counter: list | None = None):
        """Replay the first `count` cached blocks instead of computing them."""
        counter = batch_counter if batch_counter is not None else [0]
        names = self.block_names[:count]
        replays = {name: Replay(self.cache[name], counter, clone=name == names[-1]) for name in names}
        with replaced_modules(self.model, replays):
            yield counter

    def skippable_blocks(self, layer: str) -> int:
        return self.first_block_for.get(layer, 0) if self.cache else 0

    # ------------------------------------------------------------------ perturbations
    @contextlib.contextmanager
    def weight_at(self, layer: str, bits: int):
        """Only `layer` has its weight at `bits`; everything else stays at the reference."""
        module = self.layers[layer]
        overwrite_weight(
            module.weight.data,
            fake_quantize_layer(module, self._float_weights[layer], self.schemes(layer, bits), layer),
        )
        try:
            yield
        finally:
            overwrite_weight(module.weight.data, self._reference_weight(layer))  # recomputed: saves a copy

    def weight_change(self, layer: str, bits: int) -> torch.Tensor:
        """`layer`'s weight at `bits` minus its reference weight: the perturbation a probe makes."""
        module = self.layers[layer]
        quantized = fake_quantize_layer(module, self._float_weights[layer], self.schemes(layer, bits), layer)
        return quantized - module.weight.detach()  # the model holds the reference outside `weight_at`

    def set_activation_reference(self, ranges: dict[str, tuple[float, float]]) -> None:
        """Quantize every probed layer's input at 8 bits (the W8A8 reference for activation scores)."""
        self.act_ranges = dict(ranges)
        for name, layer in self.layers.items():
            self._act_bits[name] = REFERENCE_BITS
            self._hooks.append(layer.register_forward_pre_hook(self._quantize_input(name)))

    def _quantize_input(self, name):
        def hook(module, args):
            bits = self._act_bits[name]
            scale, zero = activation_qparams(*self.act_ranges[name], bits)
            return (fake_quantize_activation(args[0], scale, zero, bits), *args[1:])

        return hook

    @contextlib.contextmanager
    def activation_at(self, layer: str, bits: int):
        self._act_bits[layer] = bits
        try:
            yield
        finally:
            self._act_bits[layer] = REFERENCE_BITS

    # ------------------------------------------------------------------ running
    @torch.no_grad()
    def run(self, layer: str | None, on_output: Callable[[int, object], None]) -> None:
        """One pass over the calibration set, skipping the cached blocks that precede `layer`."""
        skip = self.skippable_blocks(layer) if layer is not None else 0
        with self.skip_blocks(skip) as counter:
            for i, batch in enumerate(self.batches):
                counter[0] = i
                on_output(i, self.forward(self.model, batch))


def _tree_tensors(obj):
    """The tensors of a nested output, in order (model outputs by their tuple form); other leaves are skipped."""
    if isinstance(obj, torch.Tensor):
        yield obj
        return
    if hasattr(obj, "to_tuple"):
        obj = obj.to_tuple()
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tree_tensors(item)


def _tree_digest(obj) -> bytes:
    """A hash of every tensor's dtype, shape and bytes: two outputs with the same digest are bit-identical
    (up to a BLAKE2 collision), and a batch's digest is all the replay check keeps of it."""
    h = hashlib.blake2b(digest_size=32)
    for t in _tree_tensors(obj):
        t = t.detach()
        h.update(f"{t.dtype}{tuple(t.shape)};".encode())
        if t.numel():
            h.update(t.contiguous().reshape(-1).view(torch.uint8).cpu().numpy())
    return h.digest()
