"""The refinement's judge: the whole model run with every table layer fake-quantized as a configuration
says, scored by the KL divergence of its outputs from the float model's.

Blocks (see `quant.apply.find_blocks`) before the first changed layer replay the current
configuration's recorded outputs instead of running; the replay is checked bit-exact once, and
switched off (full passes) otherwise.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from ..quant.apply import calibrate_activation_ranges, overwrite_weight
from ..quant.modules import fake_quantize_layer
from ..quant.quantizer import activation_qparams, fake_quantize_activation
from ..sensitivity.probe import Replay, detach_tree, find_blocks, replaced_modules
from ..sensitivity.task import output_tensor

logger = logging.getLogger(__name__)


class KLJudge:
    """Runs the model with every table layer fake-quantized as an assignment says; KL to the float model.

    `quantized_weight(name, bits)` gives a layer's rounded weight (default: round to nearest with the
    table's scheme); layers with activation bits get their inputs fake-quantized per tensor, with the
    float model's ranges (as packing does)."""

    def __init__(
        self,
        model,
        table,
        batches,
        forward: Callable,
        a_bits: Mapping[str, int | None],
        quantized_weight: Callable[[str, int], torch.Tensor] | None = None,
    ):
        self.model, self.table, self.batches, self.forward = model, table, batches, forward
        self.quantized_weight = quantized_weight or self._round_to_nearest
        self.layers = {n: model.get_submodule(n) for n in table.layers}
        self.float_weights = {n: m.weight.data.clone() for n, m in self.layers.items()}
        self.current: dict[str, int] = {}
        self.blocks = list(find_blocks(model))
        self.block_of = {
            n: next((i for i, b in enumerate(self.blocks) if n.startswith(b + ".") or n == b), 0) for n in table.layers
        }
        with torch.no_grad():
            self.reference = [self._log_probs(output_tensor(forward(model, b))) for b in batches]
        self.masks = [b.get("attention_mask") if isinstance(b, Mapping) else None for b in batches]
        self.cache: dict[str, list] = {}
        self.replay = bool(self.blocks)
        self.hooks = self._quantize_activations({n: a for n, a in a_bits.items() if a is not None})

    def _quantize_activations(self, a_bits: Mapping[str, int]) -> list:
        if not a_bits:
            return []
        policy = {n: {"w_bits": 8, "a_bits": a} for n, a in a_bits.items()}
        ranges = calibrate_activation_ranges(self.model, self.batches, policy, self.forward)
        hooks = []
        for name, bits in a_bits.items():
            scale, zero = activation_qparams(*ranges[name], bits)
            hooks.append(
                self.layers[name].register_forward_pre_hook(
                    lambda m, args, s=scale, z=zero, b=bits: (fake_quantize_activation(args[0], s, z, b), *args[1:])
                )
            )
        return hooks

    @staticmethod
    def _log_probs(logits: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(logits.detach().float(), dim=-1)

    def _kl(self, i: int, logits: torch.Tensor) -> tuple[float, int]:
        ref = self.reference[i]
        per = (ref.exp() * (ref - self._log_probs(logits))).sum(-1)  # KL(float || quantized) per position
        mask = self.masks[i]
        if mask is not None and mask.shape == per.shape:
            keep = mask.to(per.device).bool()
            return float(per[keep].sum()), int(keep.sum())
        return float(per.sum()), per.numel()

    def _set(self, assignment: Mapping[str, int]) -> list[str]:
        changed = [n for n, b in assignment.items() if self.current.get(n) != b]
        for n in changed:
            overwrite_weight(self.layers[n].weight.data, self.quantized_weight(n, assignment[n]))
            self.current[n] = assignment[n]
        return changed

    def _round_to_nearest(self, name: str, bits: int) -> torch.Tensor:
        scheme = self.table.scheme.weight_scheme(self.table.layers[name].get("kind", "linear"), bits)
        return fake_quantize_layer(self.layers[name], self.float_weights[name], scheme, name)

    def _mean_kl(self, replayed: list[str], upto: int | None = None) -> float:
        """One pass over the first `upto` calibration batches (all: None) with `replayed` blocks standing
        in for themselves."""
        counter = [0]
        replays = {b: Replay(self.cache[b], counter, clone=b == replayed[-1]) for b in replayed}
        total, count = 0.0, 0
        with replaced_modules(self.model, replays):
            for i, batch in enumerate(self.batches[:upto]):
                counter[0] = i
                part, n = self._kl(i, output_tensor(self.forward(self.model, batch)))
                total, count = total + part, count + n
        return total / max(count, 1)

    @torch.no_grad()
    def evaluate(self, assignment: Mapping[str, int], upto: int | None = None) -> tuple[float, dict[str, list] | None]:
        """Mean KL over the calibration positions, and the outputs of the blocks that ran; with `upto`, over
        the first `upto` batches only (a screening: no outputs, they cannot be adopted)."""
        partial = upto is not None and upto < len(self.batches)
        before = dict(self.current)
        changed = self._set(assignment)
        first = min((self.block_of[n] for n in changed), default=len(self.blocks)) if self.replay and self.cache else 0
        outputs: dict[str, list] = {b: [] for b in self.blocks[first:]}
        hooks = (
            []
            if partial
            else [
                self.model.get_submodule(b).register_forward_hook(
                    lambda m, args, out, b=b: outputs[b].append(detach_tree(out))
                )
                for b in self.blocks[first:]
            ]
        )
        try:
            kl = self._mean_kl(self.blocks[:first], upto)
        finally:
            for h in hooks:
                h.remove()
        self._set(before)  # back to the current configuration; `adopt` moves on
        return kl, None if partial else outputs

    def adopt(self, assignment: Mapping[str, int], outputs: Mapping[str, list]) -> None:
        self._set(assignment)
        self.cache.update(outputs)

    @torch.no_grad()
    def check_replay(self, kl: float) -> None:
        """Replay every block from the cache once: the KL must come out bit-identical, or replay is off."""
        if not self.replay or any(len(self.cache.get(b, ())) != len(self.batches) for b in self.blocks):
            self.replay = False
        elif self._mean_kl(self.blocks) != kl:
            logger.warning(
                "refinement: replaying block outputs did not reproduce the model exactly; "
                "every candidate runs the full model"
            )
            self.replay = False

    def use_weights(self, quantized_weight: Callable[[str, int], torch.Tensor]) -> None:
        """Judge another rounding: the next evaluation sets every layer anew from `quantized_weight`."""
        self.quantized_weight = quantized_weight
        self.current.clear()
        self.cache.clear()

    def restore(self) -> None:
        for h in self.hooks:
            h.remove()
        for n, layer in self.layers.items():
            overwrite_weight(layer.weight.data, self.float_weights[n])
        self.current.clear()
        self.cache.clear()
