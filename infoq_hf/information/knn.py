"""k-nearest-neighbour MI estimators for batches of 1-D projections.

Every function here takes ``[K, n]`` tensors: K independent 1-D variables
(one per slicing direction) observed on the same n samples, and returns K
estimates in nats. Working in 1-D lets us find neighbours by sorting instead
of building trees, which keeps all K directions in a handful of tensor ops.

* continuous vs discrete labels: the mixed estimator of Ross, "Mutual
  Information between Discrete and Continuous Data Sets" (PLoS ONE, 2014).
* continuous vs continuous: algorithm 1 of Kraskov, Stoegbauer & Grassberger,
  "Estimating mutual information" (Phys. Rev. E, 2004), "KSG".

Both estimators assume no ties (distances of exactly zero break them), so the
projections get a seeded jitter far below any real spacing, as Kraskov et al.
recommend, and are then mapped to normal scores (see prepare_projections).
"""

from __future__ import annotations

import math

import torch

__all__ = ["mi_knn_discrete", "mi_ksg", "prepare_projections"]

# Jitter amplitude relative to the (unit) standard deviation: far below the
# spacing of n <= 1e6 real samples, far above float64 resolution (~2e-16).
_JITTER = 1e-10
# Relative shrink/grow of a radius before counting, so that the neighbour that
# *defines* the radius is classified by the estimator's rule (strictly inside
# for KSG, inside for Ross) instead of by float rounding of x_i +/- eps.
_EDGE = 1e-9


def prepare_projections(a: torch.Tensor, seed: int) -> torch.Tensor:
    """Map each row of ``a`` ([K, n]) to normal scores, float64.

    A seeded jitter far below any real spacing first breaks ties at random
    (a zero-variance row becomes pure jitter, hence independent of everything
    and estimated at ~0 instead of NaN). Ranks are then replaced by standard
    normal quantiles Phi^-1((r + 1/2) / n). MI is invariant to this monotone
    map, and k-NN estimators are most accurate on Gaussian marginals; on
    heavy-tailed activations they otherwise lose accuracy (see
    benchmarks/studies/mi_estimator_check.py, "gauss-warped" cases).
    """
    a = a.to(torch.float64)
    a = a - a.mean(dim=1, keepdim=True)
    std = a.std(dim=1, keepdim=True)
    a = torch.where(std > 0, a / torch.where(std > 0, std, 1.0), torch.zeros_like(a))
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    noise = torch.randn(a.shape, generator=gen, dtype=torch.float64)
    a = a + _JITTER * noise.to(a.device)
    n = a.shape[1]
    ranks = a.argsort(dim=1).argsort(dim=1).to(torch.float64)
    return math.sqrt(2.0) * torch.erfinv(2.0 * (ranks + 0.5) / n - 1.0)


def _count_within(sorted_vals: torch.Tensor, centre: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """Per element: how many entries of its row of ``sorted_vals`` lie in
    ``[centre - radius, centre + radius]``, the element itself included."""
    hi = torch.searchsorted(sorted_vals, centre + radius, right=True)
    lo = torch.searchsorted(sorted_vals, centre - radius, right=False)
    return hi - lo


def mi_knn_discrete(a: torch.Tensor, y: torch.Tensor, k: int = 3, seed: int = 0) -> torch.Tensor:
    """Ross (2014) estimate of I(a_r ; y) for each row r of ``a`` ([K, n]).

    ``y`` holds integer class labels ([n]). Per sample i: d_i = distance to its
    k-th nearest neighbour of the same class, m_i = number of samples of any
    class within d_i; then
    ``I = psi(N) + psi(k) - <psi(N_{y_i})> - <psi(m_i)>``.
    Samples of classes with at most k members have no k-th same-class
    neighbour; as in the paper's reference code they are left out (N counts
    only the rest). Raises ValueError if fewer than two such samples remain.
    """
    if a.ndim != 2 or y.ndim != 1 or a.shape[1] != y.shape[0]:
        raise ValueError(f"expected a [K, n] and y [n], got {tuple(a.shape)} and {tuple(y.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    _, y = torch.unique(y.to(a.device), return_inverse=True)
    class_sizes = torch.bincount(y)
    keep = class_sizes[y] > k
    n_keep = int(keep.sum())
    if n_keep < 2:
        raise ValueError(
            f"knn estimator with k={k} needs at least {k + 1} samples in some class "
            f"(here the largest class has {int(class_sizes.max())} of n={y.numel()}); "
            "add calibration samples, lower k, or use estimator='binning'"
        )
    a = prepare_projections(a, seed)
    if n_keep < y.numel():
        a, y = a[:, keep], y[keep]
        class_sizes = torch.bincount(y)
    K, n = a.shape

    # Sort by value, then stably by class: each class becomes one contiguous,
    # sorted run, so its k nearest members sit within k positions either side.
    order = a.argsort(dim=1)
    order = order.gather(1, y[order].argsort(dim=1, stable=True))
    vals = a.gather(1, order)
    labs = y[order]
    inf = torch.full((K, k), math.inf, dtype=vals.dtype, device=vals.device)
    vpad = torch.cat([inf, vals, inf], dim=1).unfold(1, 2 * k + 1, 1)  # [K, n, 2k+1]
    none = torch.full((K, k), -1, dtype=labs.dtype, device=labs.device)
    lpad = torch.cat([none, labs, none], dim=1).unfold(1, 2 * k + 1, 1)
    dist = (vpad - vals.unsqueeze(2)).abs()
    dist = dist.masked_fill(lpad != labs.unsqueeze(2), math.inf)
    # Column k is the sample itself (distance 0), hence the (k+1)-th smallest.
    d = dist.kthvalue(k + 1, dim=2).values

    everyone = vals.sort(dim=1).values
    m = _count_within(everyone, vals, d * (1 + _EDGE)) - 1  # exclude self
    m = m.clamp_min(k).to(torch.float64)  # the k same-class neighbours are inside
    n_y = class_sizes[labs].to(torch.float64)
    const = float(torch.digamma(torch.tensor([float(n), float(k)], dtype=torch.float64)).sum())
    return const - torch.digamma(n_y).mean(dim=1) - torch.digamma(m).mean(dim=1)


def _kth_maxnorm(xs: torch.Tensor, zs: torch.Tensor, k: int, first: int = 48, block: int = 32) -> torch.Tensor:
    """Exact max-norm distance from each point to its k-th nearest neighbour in
    the joint (x, z) plane, for rows ``xs`` sorted ascending and ``zs`` in the
    same order.

    Candidates are visited outwards in x-order, keeping each point's k
    smallest distances so far. A point is finished once its current k-th
    distance is no larger than the x-gap to the next unvisited position on
    either side: every later candidate is at least that far in max-norm. The
    first ``first`` positions per side are done for all points at once with
    strided views (no gathers); the few unfinished points then continue in
    steps of ``block`` positions, so the work follows the local density
    instead of growing as n^2.
    """
    K, n = xs.shape
    dev, dt = xs.device, xs.dtype
    w = max(1, min(first, n - 1))
    pad = torch.full((K, w), math.inf, dtype=dt, device=dev)
    xp = torch.cat([-pad, xs, pad], dim=1).unfold(1, 2 * w + 1, 1)  # [K, n, 2w+1]
    zp = torch.cat([torch.zeros_like(pad), zs, torch.zeros_like(pad)], dim=1).unfold(1, 2 * w + 1, 1)
    dist = torch.maximum((xp - xs.unsqueeze(2)).abs(), (zp - zs.unsqueeze(2)).abs())
    best = dist.topk(k + 1, dim=2, largest=False, sorted=True).values[..., 1:]  # drop self
    best = best.reshape(K * n, k)
    del xp, zp, dist

    X, Z = xs.reshape(-1), zs.reshape(-1)
    pos_all = torch.arange(n, device=dev).repeat(K)
    base_all = torch.arange(K, device=dev).repeat_interleave(n) * n
    out = torch.empty(K * n, dtype=dt, device=dev)
    active = torch.arange(K * n, device=dev)
    o0 = w + 1  # next unvisited offset
    while True:
        pos, base, xi = pos_all[active], base_all[active], X[active]
        nxt_r, nxt_l = pos + o0, pos - o0
        gap_r = (X[base + nxt_r.clamp(max=n - 1)] - xi).masked_fill(nxt_r >= n, math.inf)
        gap_l = (xi - X[base + nxt_l.clamp(min=0)]).masked_fill(nxt_l < 0, math.inf)
        done = best[:, -1] <= torch.minimum(gap_r, gap_l)
        out[active[done]] = best[done, -1]
        if bool(done.all()):
            break
        keep = ~done
        active, best = active[keep], best[keep]
        pos, base, xi, zi = pos[keep, None], base[keep, None], xi[keep, None], Z[active, None]
        offs = torch.arange(o0, min(o0 + block, n), device=dev)
        right, left = pos + offs, pos - offs
        ir = base + right.clamp(max=n - 1)
        il = base + left.clamp(min=0)
        d_r = torch.maximum(X[ir] - xi, (Z[ir] - zi).abs()).masked_fill(right >= n, math.inf)
        d_l = torch.maximum(xi - X[il], (Z[il] - zi).abs()).masked_fill(left < 0, math.inf)
        best = torch.cat([best, d_r, d_l], dim=1).topk(k, dim=1, largest=False, sorted=True).values
        o0 += offs.numel()
    return out.view(K, n)


def mi_ksg(a: torch.Tensor, b: torch.Tensor, k: int = 3, seed: int = 0) -> torch.Tensor:
    """KSG (Kraskov et al. 2004, algorithm 1) estimate of I(a_r ; b_r) for each
    pair of rows of ``a`` and ``b`` ([K, n] each).

    eps_i = max-norm distance to the k-th neighbour in the joint space,
    n_x(i), n_z(i) = samples strictly closer than eps_i in each marginal;
    ``I = psi(k) + psi(N) - <psi(n_x + 1) + psi(n_z + 1)>``.
    """
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"expected two [K, n] tensors of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    K, n = a.shape
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if n < k + 1:
        raise ValueError(f"ksg estimator with k={k} needs at least {k + 1} samples, got n={n}")
    a = prepare_projections(a, seed)
    # Different jitter for the second variable: identical jitter would couple two
    # constant projections.
    b = prepare_projections(b, seed + 1)
    order = a.argsort(dim=1)
    xs = a.gather(1, order)
    zs = b.gather(1, order)
    eps = _kth_maxnorm(xs, zs, k)
    strict = eps * (1 - _EDGE)
    nx = _count_within(xs, xs, strict) - 1
    nz = _count_within(zs.sort(dim=1).values, zs, strict) - 1
    nx = nx.clamp_min(0).to(torch.float64)
    nz = nz.clamp_min(0).to(torch.float64)
    const = float(torch.digamma(torch.tensor([float(k), float(n)], dtype=torch.float64)).sum())
    return const - (torch.digamma(nx + 1) + torch.digamma(nz + 1)).mean(dim=1)
