"""Gaussian (second-moment) MI estimators for batches of 1-D projections.

Between two continuous projections: I = -1/2 log(1 - rho^2), rho their Pearson
correlation, exact for jointly Gaussian pairs. Against labels: the Gaussian
class-conditional bound I <= 1/2 log(Var[a] / E_y Var[a | y]) (maximum-entropy
H(a) with the Gaussian H(a | y)), exact in the limit of small class separation.

Unlike rank-based binning, these move smoothly with small perturbations of the
activations, which is what a quantization probe produces; they have low variance
at small n. They ignore non-Gaussian structure, so they are a sensitivity
measure more than an accurate MI value for heavy-tailed data.
"""

from __future__ import annotations

import torch

__all__ = ["mi_gaussian_continuous", "mi_gaussian_discrete"]

_EPS = 1e-12
MIN_SAMPLES = 8  # variances and correlations from fewer samples are mostly noise


def _check_n(n: int) -> None:
    if n < MIN_SAMPLES:
        raise ValueError(f"the gaussian MI estimator needs at least {MIN_SAMPLES} samples, got {n}")


def mi_gaussian_continuous(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-row I(a_r; b_r) for [K, n] projections, in nats."""
    _check_n(a.shape[1])
    a = a.double() - a.double().mean(dim=1, keepdim=True)
    b = b.double() - b.double().mean(dim=1, keepdim=True)
    cov = (a * b).mean(dim=1)
    var = (a * a).mean(dim=1) * (b * b).mean(dim=1)
    rho2 = torch.where(var > _EPS, cov * cov / var.clamp_min(_EPS), torch.zeros_like(cov))
    return -0.5 * torch.log1p(-rho2.clamp(max=1 - 1e-12))


def mi_gaussian_discrete(a: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-row I(a_r; y) for [K, n] projections and [n] integer labels, in nats."""
    _check_n(a.shape[1])
    a = a.double()
    _, labels = torch.unique(y.to(a.device), return_inverse=True)
    classes = int(labels.max()) + 1
    counts = torch.bincount(labels, minlength=classes).to(a.dtype)
    sums = torch.zeros(a.shape[0], classes, dtype=a.dtype, device=a.device).index_add_(1, labels, a)
    means = sums / counts
    within = ((a - means[:, labels]) ** 2).mean(dim=1)
    total = ((a - a.mean(dim=1, keepdim=True)) ** 2).mean(dim=1)
    ok = (total > _EPS) & (within > _EPS)
    return torch.where(ok, 0.5 * torch.log(total.clamp_min(_EPS) / within.clamp_min(_EPS)), torch.zeros_like(total))
