"""What a "sample", a "label" and a "loss" are for the model being probed.

Two tasks cover the models infoq_hf targets:
- `classification`: one sample per input (image or sequence). Y = the class label.
  Observer activations are pooled to one vector per sample: the spatial mean for
  [B, C, H, W] maps, the token mean for [B, T, H] sequences.
- `causal_lm`: one sample per token position t that has a next token (t < T-1,
  attention_mask 1). Y is a discrete variable of manageable alphabet derived from
  the next token (see `lm_target` in `search`). Observer activations are taken per
  token, at the same positions. A fixed, seeded subset of positions (at most
  `max_samples`) is used by every probe, so probe and reference see the same samples.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from ..quant.apply import default_forward


def model_output(model, batch) -> torch.Tensor:
    """Run a batch and return the logits tensor (transformers outputs, tuples or tensors)."""
    out = default_forward(model, batch)
    return output_tensor(out)


def output_tensor(out) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if hasattr(out, "logits") and out.logits is not None:
        return out.logits
    if isinstance(out, Mapping):
        return next(v for v in out.values() if isinstance(v, torch.Tensor))
    if isinstance(out, (tuple, list)):
        return next(output_tensor(v) for v in out if v is not None)
    raise TypeError(f"cannot find a tensor in the model output of type {type(out).__name__}")


def batch_labels(batch) -> torch.Tensor | None:
    if isinstance(batch, Mapping):
        return batch.get("labels")
    if isinstance(batch, (tuple, list)) and len(batch) > 1:
        return batch[1]
    return None


def detect_task(model, batch) -> str:
    """'causal_lm' for transformers *ForCausalLM models fed input_ids, else 'classification'."""
    arch = " ".join(getattr(getattr(model, "config", None), "architectures", None) or [type(model).__name__])
    if isinstance(batch, Mapping) and "input_ids" in batch and ("CausalLM" in arch or "LMHead" in arch):
        return "causal_lm"
    return "classification"


class SampleIndex:
    """Which rows of a batch's pooled activations are samples, fixed once for all probes."""

    def __init__(self, task: str, batches: list, max_samples: int, seed: int):
        self.task = task
        self.rows: list[torch.Tensor | None] = []
        if task != "causal_lm":
            self.rows = [None] * len(batches)
            return
        # Candidate positions: every token that has a next token and is not padding.
        candidates = []
        for bi, batch in enumerate(batches):
            ids = batch["input_ids"]
            mask = batch.get("attention_mask")
            valid = torch.ones_like(ids, dtype=torch.bool)
            valid[:, -1] = False
            if mask is not None:
                valid &= mask.bool()
                valid[:, :-1] &= mask[:, 1:].bool()
            flat = valid.reshape(-1).nonzero().squeeze(1)
            candidates.append(flat)
        total = sum(c.numel() for c in candidates)
        gen = torch.Generator().manual_seed(seed)
        keep = torch.zeros(total, dtype=torch.bool)
        keep[torch.randperm(total, generator=gen)[: min(max_samples, total)]] = True
        start = 0
        for c in candidates:
            self.rows.append(c[keep[start:start + c.numel()]])
            start += c.numel()

    def pool(self, activation: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """Activation of one batch -> [n_samples, features] (float32)."""
        a = activation.detach()
        if self.task == "causal_lm":
            a = a.reshape(a.shape[0] * a.shape[1], -1) if a.dim() >= 3 else a.reshape(-1, 1)
            return a[self.rows[batch_idx]].float()
        if a.dim() == 4:  # [B, C, H, W] conv maps: spatial mean
            return a.float().mean(dim=(2, 3))
        if a.dim() == 3:  # [B, T, H] sequences: token mean
            return a.float().mean(dim=1)
        return a.float().reshape(a.shape[0], -1)

    def labels(self, batch, batch_idx: int) -> torch.Tensor:
        if self.task == "causal_lm":
            ids = batch["input_ids"]
            nxt = torch.full_like(ids, -1)
            nxt[:, :-1] = ids[:, 1:]
            return nxt.reshape(-1)[self.rows[batch_idx]]
        y = batch_labels(batch)
        if y is None:
            raise ValueError(
                "the InfoQ task term needs labels: give batches as (inputs, labels) or dicts with a 'labels' "
                "entry, or set task_weight=0 to use the input term only"
            )
        return y.reshape(-1)


def task_loss(logits: torch.Tensor, batch, task: str, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of the model's task: next-token for causal LMs, class labels otherwise."""
    if task == "causal_lm":
        ids = batch["input_ids"]
        target = ids[:, 1:].clone()
        mask = batch.get("attention_mask")
        if mask is not None:
            target[~mask[:, 1:].bool()] = -100
        return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), target.reshape(-1),
                               ignore_index=-100, reduction=reduction)
    y = batch_labels(batch)
    if y is None:
        raise ValueError("this method needs labels: give batches as (inputs, labels) or dicts with 'labels'")
    return F.cross_entropy(logits.float(), y, reduction=reduction)
