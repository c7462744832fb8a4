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


def _batch_tensors(batch) -> dict[str, torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return {"inputs": batch}
    if isinstance(batch, Mapping):
        return {str(k): v for k, v in batch.items() if isinstance(v, torch.Tensor)}
    if isinstance(batch, (tuple, list)):
        names = ["inputs", "labels"] + [f"item {i}" for i in range(2, len(batch))]
        return {n: v for n, v in zip(names, batch) if isinstance(v, torch.Tensor)}
    return {}


def _structure(batch):
    """What every calibration batch must share: its kind (tensor, tuple, mapping) and its keys."""
    if isinstance(batch, Mapping):
        return "a mapping", tuple(sorted(map(str, batch)))
    if isinstance(batch, (tuple, list)):
        return f"a {type(batch).__name__}", len(batch)
    return type(batch).__name__, None


def _run_one(model, forward, sample, i: int, shapes) -> torch.Tensor:
    try:
        with torch.no_grad():
            return output_tensor(forward(model, sample))
    except (RuntimeError, IndexError, TypeError) as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(
            f"the model cannot run calibration batch {i} (tensor shapes {shapes}): {first_line}. Give "
            "inputs of the shape and kind the model takes (channels, features, sequence length)"
        ) from e


def refuse_meta(model, batches: list) -> None:
    """Refuse a model or calibration tensors on the meta device (they hold no data) before anything runs."""
    if any(p.is_meta for p in model.parameters()):
        raise ValueError(
            "the model's weights are on the meta device (an empty or offloaded model); load real "
            "weights (e.g. from_pretrained without a device_map that offloads) before searching"
        )
    for i, batch in enumerate(batches):
        for key, t in _batch_tensors(batch).items():
            if t.is_meta:
                raise ValueError(
                    f"calibration batch {i}: {key!r} is on the meta device (it holds no data); pass real tensors"
                )


def check_calibration(model, batches: list, sample, forward, task: str, method: str, sample_of=None) -> None:
    """Refuse, with the problem and the fix, what would otherwise surface as a raw torch error or a silently
    wrong table: a model on the meta device, empty or non-finite tensors, token ids outside the vocabulary,
    inputs the model cannot run, labels that are not integer classes of the model's output (constant
    labels too, for InfoQ, whose task term then carries no information). `sample`: one sample of the first
    batch, run once to learn the output's class count."""
    refuse_meta(model, batches)
    if not batches:
        return
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    vocab = getattr(embeddings, "num_embeddings", None)
    first = _structure(batches[0])
    for i, batch in enumerate(batches):
        if _structure(batch) != first:
            raise ValueError(
                f"calibration batch {i} is {_structure(batch)[0]} {_structure(batch)[1] or ''}, but batch "
                f"0 is {first[0]} {first[1] or ''}; give every batch the same structure (all dicts "
                "with the same keys, or all tuples)"
            )
        for key, t in _batch_tensors(batch).items():
            if t.numel() == 0:
                raise ValueError(f"calibration batch {i}: {key!r} is empty (shape {list(t.shape)}); drop empty batches")
            if t.is_floating_point() and not torch.isfinite(t).all():
                raise ValueError(
                    f"calibration batch {i}: {key!r} holds NaN/inf values; clean the data (or drop those samples)"
                )
        ids = batch.get("input_ids") if isinstance(batch, Mapping) else None
        if isinstance(ids, torch.Tensor) and vocab is not None and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise ValueError(
                f"calibration batch {i}: token ids range over [{int(ids.min())}, {int(ids.max())}], but the "
                f"model's vocabulary has {vocab} entries; tokenize with the model's own tokenizer"
            )

    def shapes_of(batch):
        return {k: list(v.shape) for k, v in _batch_tensors(batch).items()}

    classes = _run_one(model, forward, sample, 0, shapes_of(batches[0])).shape[-1]
    if sample_of is not None:  # a batch whose samples are shaped otherwise than batch 0's: run one of them too
        seen = {tuple((k, tuple(v[1:])) for k, v in sorted(shapes_of(batches[0]).items()))}
        for i, batch in enumerate(batches[1:], start=1):
            per_sample = tuple((k, tuple(v[1:])) for k, v in sorted(shapes_of(batch).items()))
            if per_sample not in seen:
                _run_one(model, forward, sample_of(batch), i, shapes_of(batch))
                seen.add(per_sample)
    if task != "classification" or method not in ("infoq", "hawq", "oracle"):
        return
    labels = [batch_labels(b) for b in batches]
    if any(y is None for y in labels):
        return  # the methods that need labels say so themselves
    for i, y in enumerate(labels):
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ValueError(
                f"calibration batch {i}: labels have dtype {y.dtype}, but they must be integer class "
                "indices (torch.long); convert them, e.g. labels.long() if they hold whole numbers"
            )
        if int(y.min()) < 0 or int(y.max()) >= classes:
            raise ValueError(
                f"calibration batch {i}: labels range over [{int(y.min())}, {int(y.max())}], but the model "
                f"outputs {classes} classes; labels must lie in [0, {classes})"
            )
    if method == "infoq" and len(torch.unique(torch.cat([y.reshape(-1) for y in labels]))) < 2:
        raise ValueError(
            "every calibration label is the same class; InfoQ scores the information layers carry about "
            "the label, which a constant label has none of. Calibrate on samples of several classes"
        )


def is_causal_lm(model) -> bool:
    """A transformers *ForCausalLM / *LMHeadModel (by its config's architectures, else its class)."""
    arch = " ".join(getattr(getattr(model, "config", None), "architectures", None) or [type(model).__name__])
    return "CausalLM" in arch or "LMHead" in arch


def detect_task(model, batch) -> str:
    """'causal_lm' for transformers *ForCausalLM models fed input_ids, else 'classification'."""
    if isinstance(batch, Mapping) and "input_ids" in batch and is_causal_lm(model):
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
        for batch in batches:
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
            self.rows.append(c[keep[start : start + c.numel()]])
            start += c.numel()

    def pool(self, activation: torch.Tensor, batch_idx: int) -> torch.Tensor:
        """Activation of one batch -> [n_samples, features] (float32); differentiable, so that the
        first-order InfoQ estimate can backpropagate through it (every other caller runs without grad)."""
        a = activation
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
        return F.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
            target.reshape(-1),
            ignore_index=-100,
            reduction=reduction,
        )
    y = batch_labels(batch)
    if y is None:
        raise ValueError("this method needs labels: give batches as (inputs, labels) or dicts with 'labels'")
    return F.cross_entropy(logits.float(), y, reduction=reduction)
