"""Seeded random unit directions for sliced mutual information.

Sliced MI (Goldfeld & Greenewald, "Sliced Mutual Information", 2021) averages
1-D MI over directions drawn uniformly from the unit sphere. A normalised
standard Gaussian vector is uniform on the sphere, so that is what we draw.
"""

from __future__ import annotations

import torch

__all__ = ["random_directions"]


def random_directions(dim: int, k: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Return ``k`` unit vectors in ``R^dim`` as a ``[k, dim]`` CPU tensor.

    The draw always happens on the CPU in float64 with its own
    ``torch.Generator`` (never the global RNG), so the same ``(dim, k, seed)``
    gives bit-identical directions in every process and on every machine,
    whatever device the activations later live on; only then is it cast to
    ``dtype``.
    """
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k (number of directions) must be a positive int, got {k!r}")
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    g = torch.randn(k, dim, generator=gen, dtype=torch.float64)
    # A zero-norm Gaussian draw has probability zero; the clamp only guards
    # against division by zero in the degenerate dim=1 underflow case.
    g = g / g.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    return g.to(dtype)
