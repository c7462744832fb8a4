"""Sliced mutual information (Goldfeld & Greenewald, "Sliced Mutual
Information: A Scalable Measure of Statistical Dependence", NeurIPS 2021).

SMI(X; Y) = E_theta[ I(theta^T X ; Y) ] with theta uniform on the sphere;
with a continuous partner it is E_{theta, phi}[ I(theta^T X ; phi^T Z) ].
Here the expectation is a Monte-Carlo mean over a fixed set of directions
(``random_directions``), so that the same directions can be reused for the
8-bit reference and every probe and their difference is paired.

This module validates inputs, projects, and hands the ``[K, n]`` projections
to a 1-D estimator chosen by name.
"""

from __future__ import annotations

import torch

from .binning import mi_binning_continuous, mi_binning_discrete
from .gaussian import mi_gaussian_continuous, mi_gaussian_discrete
from .knn import mi_knn_discrete, mi_ksg

__all__ = [
    "DEFAULT_ESTIMATOR",
    "ESTIMATORS",
    "project",
    "sliced_mi_continuous",
    "sliced_mi_discrete",
    "smi_continuous",
    "smi_discrete",
]

# "knn": Ross (2014) against labels, KSG (Kraskov et al. 2004) between two
# continuous projections. "binning": equal-frequency cells + Miller-Madow.
# "gaussian": second moments only (correlation / variance ratio): smooth in small perturbations.
ESTIMATORS = ("knn", "binning", "gaussian")
# Chosen by benchmarks/studies/mi_estimator_check.py; see README.md next to this file.
DEFAULT_ESTIMATOR = "binning"


def _check_estimator(estimator: str) -> str:
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown MI estimator {estimator!r}; choose one of {ESTIMATORS}")
    return estimator


def _as_samples(x: torch.Tensor, name: str) -> torch.Tensor:
    """Return ``x`` as [n, features]; trailing dims (e.g. C, H, W) are flattened."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"{name} must have shape [n, d] (n samples), got {tuple(x.shape)}")
    if x.is_complex():
        raise ValueError(f"{name} must be real-valued, got {x.dtype}")
    x = x.reshape(x.shape[0], -1)
    if not x.is_floating_point():
        x = x.to(torch.float32)
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: activations contain NaN/inf")
    return x


def project(x: torch.Tensor, directions: torch.Tensor, name: str = "x") -> torch.Tensor:
    """Projections ``directions @ x_i`` for every sample: returns [K, n].

    ``x`` is [n, d] (or [n, ...], flattened), ``directions`` is [K, d]. The
    samples are centred first so that a large common offset does not eat the
    float32 precision of the projection; MI is shift-invariant. Computation
    stays on ``x``'s device, in float64 if ``x`` is float64, else float32.
    """
    x = _as_samples(x, name)
    if not isinstance(directions, torch.Tensor) or directions.ndim != 2:
        raise ValueError(f"directions for {name} must be a [K, d] tensor")
    if directions.shape[1] != x.shape[1]:
        raise ValueError(f"directions have dim {directions.shape[1]} but {name} has {x.shape[1]} features per sample")
    if not bool(torch.isfinite(directions).all()):
        raise ValueError(f"directions for {name} contain NaN/inf")
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.to(dt)
    x = x - x.mean(dim=0, keepdim=True)
    return directions.to(device=x.device, dtype=dt) @ x.T


def _as_labels(y: torch.Tensor, n: int) -> torch.Tensor:
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"labels must be a torch.Tensor, got {type(y).__name__}")
    if y.is_floating_point() or y.is_complex():
        raise ValueError(f"labels must be integer class ids, got dtype {y.dtype}")
    y = y.reshape(-1) if y.ndim > 1 and y.numel() == y.shape[0] else y
    if y.ndim != 1:
        raise ValueError(f"labels must have shape [n], got {tuple(y.shape)}")
    if y.shape[0] != n:
        raise ValueError(f"mismatched number of samples: activations have n={n}, labels have {y.shape[0]}")
    return y.long()


def sliced_mi_discrete(
    x: torch.Tensor,
    y: torch.Tensor,
    directions: torch.Tensor,
    *,
    estimator: str = DEFAULT_ESTIMATOR,
    k: int = 3,
    bins: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Per-direction I(theta_r^T x ; y) in nats, as a float64 CPU tensor [K].

    ``x``: [n, d] activations (trailing dims flattened); ``y``: [n] integer
    labels; ``directions``: [K, d] (see ``random_directions``).
    ``estimator``: "knn" (Ross 2014, ``k`` neighbours; samples of classes with
    <= k members are skipped) or "binning" (``bins`` quantile cells, default
    round(2 n^(1/3))). ``seed`` fixes the tie-breaking jitter of "knn".
    Estimates are not clipped at 0: small negative values mean "no detectable
    information" and clipping would bias averages and differences upwards.
    """
    est = _check_estimator(estimator)
    a = project(x, directions, "x")
    yy = _as_labels(y, a.shape[1])
    if est == "knn":
        out = mi_knn_discrete(a, yy, k=k, seed=seed)
    elif est == "gaussian":
        out = mi_gaussian_discrete(a, yy)
    else:
        out = mi_binning_discrete(a, yy, bins=bins)
    return out.to(device="cpu", dtype=torch.float64)


def sliced_mi_continuous(
    x: torch.Tensor,
    z: torch.Tensor,
    dir_x: torch.Tensor,
    dir_z: torch.Tensor,
    *,
    estimator: str = DEFAULT_ESTIMATOR,
    k: int = 3,
    bins: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Per-pair I(theta_r^T x ; phi_r^T z) in nats, as a float64 CPU tensor [K].

    ``x``: [n, dx], ``z``: [n, dz]; ``dir_x``: [K, dx] and ``dir_z``: [K, dz]
    are used in pairs (row r with row r), which is the Monte-Carlo form of the
    double expectation in the SMI definition. ``estimator``: "knn" (KSG,
    ``k`` neighbours) or "binning" (``bins`` x ``bins`` quantile cells,
    default round(1.5 n^(1/3))).
    """
    est = _check_estimator(estimator)
    if isinstance(x, torch.Tensor) and isinstance(z, torch.Tensor) and x.ndim >= 1 and z.ndim >= 1:
        if x.shape[0] != z.shape[0]:
            raise ValueError(f"mismatched number of samples: x has n={x.shape[0]}, z has n={z.shape[0]}")
    if isinstance(dir_x, torch.Tensor) and isinstance(dir_z, torch.Tensor) and dir_x.shape[:1] != dir_z.shape[:1]:
        raise ValueError(
            f"dir_x and dir_z must hold the same number of directions (paired), "
            f"got {tuple(dir_x.shape)} and {tuple(dir_z.shape)}"
        )
    a = project(x, dir_x, "x")
    b = project(z, dir_z, "z").to(a.device)
    if est == "knn":
        out = mi_ksg(a, b, k=k, seed=seed)
    elif est == "gaussian":
        out = mi_gaussian_continuous(a, b)
    else:
        out = mi_binning_continuous(a, b, bins=bins)
    return out.to(device="cpu", dtype=torch.float64)


def smi_discrete(x: torch.Tensor, y: torch.Tensor, directions: torch.Tensor, **kwargs) -> float:
    """Sliced MI SMI(x; y) in nats: mean of ``sliced_mi_discrete`` over directions."""
    return float(sliced_mi_discrete(x, y, directions, **kwargs).mean())


def smi_continuous(x: torch.Tensor, z: torch.Tensor, dir_x: torch.Tensor, dir_z: torch.Tensor, **kwargs) -> float:
    """Sliced MI SMI(x; z) in nats: mean of ``sliced_mi_continuous`` over pairs."""
    return float(sliced_mi_continuous(x, z, dir_x, dir_z, **kwargs).mean())
