"""The sensitivity measures InfoQ is judged against (same table format, same allocation).

- `weight_mse`: ||Q_b(W) - W||^2, no data.
- `hawq`: HAWQ-V2/V3: the mean Hessian trace of the task loss w.r.t. the layer's weight
  (Hutchinson's estimator, Rademacher probes) x ||Q_b(W) - W||^2.
- `size_only`: S(l, b) = (n_l / N) * t2(l, b): every weight counts the same, each layer's relative
  weight error t2 from the quantizer it is packed with (n_l its weights, N all layers' weights). It
  knows nothing about a layer but its size and its quantizer, so an allocation built on it shows what
  the rest of the pipeline (rounding-aware costs, refinement) does alone.
- `llamacpp`: llama.cpp's Q4_K_M / Q3_K_M mix as `size_only` scores weighted by the preset's
  preference for each tensor (`llamacpp`).
- `random`: a seeded random layer importance r_l ~ U(0,1) times (2^-b - 2^-8): monotone in
  bits (as any sane score is) but with a random order of layers. The floor a proxy must beat.
- `oracle`: the true change of the task loss on held-out data when only layer l is at b
  bits (the rest at the 8-bit reference): what every proxy approximates.
"""

from __future__ import annotations

import contextlib
import logging
import math

import torch

from ..quant.modules import fake_quantize_layer
from .probe import Prober
from .task import output_tensor, task_loss

logger = logging.getLogger(__name__)


def weight_mse_scores(layers, bits, schemes) -> dict[str, dict[int, float]]:
    scores = {}
    for name, layer in layers.items():
        w = layer.weight.detach().float()
        scores[name] = {
            b: float(((fake_quantize_layer(layer, w, schemes(name, b), name) - w) ** 2).sum()) for b in bits
        }
    return scores


def relative_weight_errors(layers, bits, schemes) -> dict[str, dict[int, float]]:
    """t2(l, b) = ||Q_b(W) - W||^2 / ||W||^2 of the quantizer the model is packed with.

    Made non-increasing in bits (a wider grid never does worse in the allocation's eyes)."""
    mse = weight_mse_scores(layers, bits, schemes)
    out = {}
    for name, layer in layers.items():
        norm = float((layer.weight.detach().float() ** 2).sum()) or 1.0
        running, errors = 0.0, {}
        for b in sorted(bits, reverse=True):
            running = max(running, mse[name][b] / norm)
            errors[b] = running
        out[name] = {b: errors[b] for b in sorted(bits)}
    return out


def size_prior(layers) -> dict[str, float]:
    """n_l / N: the share of the layers' weights each layer holds (`size_only`'s alpha_l)."""
    sizes = {name: layer.weight.numel() for name, layer in layers.items()}
    total = sum(sizes.values()) or 1
    return {name: n / total for name, n in sizes.items()}


def random_scores(layers, bits, seed: int) -> dict[str, dict[int, float]]:
    gen = torch.Generator().manual_seed(seed)
    importance = torch.rand(len(layers), generator=gen).tolist()
    return {name: {b: r * (2.0**-b - 2.0**-8) for b in bits} for name, r in zip(layers, importance)}


@contextlib.contextmanager
def _eager_attention(model):
    """Double backward needs attention without fused kernels (SDPA has no second derivative on CPU)."""
    setter = getattr(model, "set_attn_implementation", None)
    config = getattr(model, "config", None)
    previous = getattr(config, "_attn_implementation", None) if config is not None else None
    if setter is None or previous in (None, "eager"):
        yield
        return
    setter("eager")
    try:
        yield
    finally:
        setter(previous)


def hessian_traces(model, layers, batches, forward, task, samples: int, seed: int, progress=None) -> dict[str, float]:
    """Mean Hessian trace per weight, Tr(H_l) / n_l, by Hutchinson's estimator over `batches`."""
    params = {n: layer.weight for n, layer in layers.items()}
    saved = {p: p.requires_grad for p in model.parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params.values():
        p.requires_grad_(True)
    gen = torch.Generator().manual_seed(seed)
    traces = {n: 0.0 for n in params}
    model.eval()
    try:
        with _eager_attention(model), torch.enable_grad():
            for _ in range(samples):
                vs = {n: (torch.randint(0, 2, p.shape, generator=gen) * 2 - 1).to(p.dtype) for n, p in params.items()}
                for batch in batches:
                    loss = task_loss(output_tensor(forward(model, batch)), batch, task) / len(batches)
                    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
                    dot = sum((g * vs[n]).sum() for g, n in zip(grads, params))
                    hvs = torch.autograd.grad(dot, list(params.values()))
                    for n, hv in zip(params, hvs):
                        traces[n] += float((hv * vs[n]).sum()) / samples
                if progress is not None:
                    progress.update(1)
    finally:
        for p, flag in saved.items():
            p.requires_grad_(flag)
    return {n: traces[n] / params[n].numel() for n in params}


def hawq_scores(model, layers, bits, schemes, batches, forward, task, samples, seed, progress=None):
    traces = hessian_traces(model, layers, batches, forward, task, samples, seed, progress)
    not_finite = [n for n, t in traces.items() if not math.isfinite(t)]
    if not_finite:
        raise ValueError(
            f"hawq: the Hessian trace of {len(not_finite)} layers (e.g. {not_finite[0]!r}) is not finite; "
            "the model's loss on the calibration batches overflows or is NaN. Check the data and model"
        )
    nonpositive = [n for n, t in traces.items() if t <= 0]
    if nonpositive:  # Hutchinson noise (or a saddle): these layers will look free to quantize
        logger.warning(
            "hawq: %d of %d layers have a non-positive Hessian trace estimate (e.g. %s); raise "
            "hutchinson_samples for a steadier estimate",
            len(nonpositive),
            len(traces),
            nonpositive[0],
        )
    mse = weight_mse_scores(layers, bits, schemes)
    return {n: {b: traces[n] * mse[n][b] for b in bits} for n in layers}, traces


class OracleScorer:
    """Task loss on held-out data with one layer perturbed, minus the reference loss."""

    def __init__(self, prober: Prober, task: str):
        self.prober, self.task = prober, task
        self.reference = self._loss(None)

    def _loss(self, layer) -> float:
        total = []

        def on_output(i, out):
            total.append(float(task_loss(output_tensor(out), self.prober.batches[i], self.task)))

        self.prober.run(layer, on_output)
        return sum(total) / len(total)

    def score_current(self, layer: str, bits: int) -> float:
        return self._loss(layer) - self.reference
