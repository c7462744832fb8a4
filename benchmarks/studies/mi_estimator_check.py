"""Compare the 1-D MI estimators of infoq_hf.information against closed forms.

    python -m benchmarks.studies.mi_estimator_check [--n 2048] [--reps 32]

For each case, ``reps`` independent samples of size n are estimated in one
batched call (one row each); the table gives bias, standard deviation and
RMSE against the true MI in nats. Cases:

* labels: Y uniform on {0,1}, X | Y ~ N(+-s/2, 1); true I(X;Y) by quadrature.
* gauss: (X, Z) standard bivariate normal with correlation rho;
  I = -0.5 log(1 - rho^2).
* gauss-warped: the same pair with X -> X^3 and Z -> exp(Z). MI is invariant
  to these monotone maps, so a good estimator should not move; activations
  are rarely Gaussian, so this is the realistic case.

Finally the full sliced API is timed at the sizes InfoQ uses
(n=2048 samples, d=4096 features, K=256 directions).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from scipy import integrate, stats

from infoq_hf.information import random_directions, sliced_mi_continuous, sliced_mi_discrete
from infoq_hf.information.binning import mi_binning_continuous, mi_binning_discrete
from infoq_hf.information.knn import mi_knn_discrete, mi_ksg


def mixture_mi(sep: float) -> float:
    """True I(X;Y) in nats for Y ~ Bernoulli(1/2), X | Y ~ N(+-sep/2, 1)."""

    def p(x):
        return 0.5 * (stats.norm.pdf(x, -sep / 2) + stats.norm.pdf(x, sep / 2))

    lim = sep / 2 + 12
    h_x, _ = integrate.quad(lambda x: -p(x) * np.log(p(x)), -lim, lim, points=[-sep / 2, sep / 2], limit=200)
    return h_x - 0.5 * math.log(2 * math.pi * math.e)


def discrete_candidates(n: int):
    c = round(n ** (1 / 3))
    return {
        "knn k=3": lambda a, y: mi_knn_discrete(a, y, k=3),
        "knn k=5": lambda a, y: mi_knn_discrete(a, y, k=5),
        f"binning b={c}": lambda a, y: mi_binning_discrete(a, y, bins=c),
        f"binning b={round(1.5 * c)}": lambda a, y: mi_binning_discrete(a, y, bins=round(1.5 * c)),
        f"binning b={2 * c}": lambda a, y: mi_binning_discrete(a, y, bins=2 * c),
    }


def continuous_candidates(n: int):
    c = round(n ** (1 / 3))
    return {
        "knn(ksg) k=3": lambda a, b: mi_ksg(a, b, k=3),
        "knn(ksg) k=5": lambda a, b: mi_ksg(a, b, k=5),
        f"binning b={c}": lambda a, b: mi_binning_continuous(a, b, bins=c),
        f"binning b={round(1.5 * c)}": lambda a, b: mi_binning_continuous(a, b, bins=round(1.5 * c)),
        f"binning b={2 * c}": lambda a, b: mi_binning_continuous(a, b, bins=2 * c),
    }


def row(case: str, name: str, est: torch.Tensor, truth: float) -> str:
    err = est - truth
    bias, sd = float(err.mean()), float(est.std())
    rmse = math.sqrt(float((err**2).mean()))
    return f"{case:<24}{name:<16}{truth:>8.4f}{bias:>+9.4f}{sd:>8.4f}{rmse:>8.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--reps", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n, R = args.n, args.reps
    g = torch.Generator().manual_seed(args.seed)
    header = f"{'case':<24}{'estimator':<16}{'true':>8}{'bias':>9}{'sd':>8}{'rmse':>8}"
    rmse_sum: dict[str, float] = {}
    n_cases: dict[str, int] = {}

    print(f"n={n}, reps={R}\n{header}")
    y = torch.arange(n) % 2
    for sep in (0.0, 1.0, 2.0, 4.0):
        a = (y.double() - 0.5) * sep + torch.randn(R, n, generator=g, dtype=torch.float64)
        truth = mixture_mi(sep)
        for name, f in discrete_candidates(n).items():
            est = f(a, y)
            print(row(f"labels sep={sep}", name, est, truth))
            key = f"labels   {name}"
            rmse_sum[key] = rmse_sum.get(key, 0.0) + float(((est - truth) ** 2).mean()) ** 0.5
            n_cases[key] = n_cases.get(key, 0) + 1
    for warped in (False, True):
        for rho in (0.0, 0.3, 0.6, 0.9):
            x = torch.randn(R, n, generator=g, dtype=torch.float64)
            z = rho * x + math.sqrt(1 - rho**2) * torch.randn(R, n, generator=g, dtype=torch.float64)
            if warped:
                x, z = x**3, z.exp()
            truth = -0.5 * math.log(1 - rho**2)
            for name, f in continuous_candidates(n).items():
                est = f(x, z)
                print(row(f"gauss{'-warped' if warped else ''} rho={rho}", name, est, truth))
                key = f"continuous {name}"
                rmse_sum[key] = rmse_sum.get(key, 0.0) + float(((est - truth) ** 2).mean()) ** 0.5
                n_cases[key] = n_cases.get(key, 0) + 1
            n_cases[name] = n_cases.get(name, 0) + 1

    print("\nmean RMSE over cases (nats):")
    for name, s in rmse_sum.items():
        print(f"  {name:<30}{s / n_cases[name]:.4f}")

    d, K = 4096, 256
    x = torch.randn(n, d, generator=g)
    lab = torch.randint(0, 10, (n,), generator=g)
    # Labels carry some information so the k-NN searches are not the trivial case.
    x[:, :16] += lab[:, None].float()
    z = x[:, :512] @ torch.randn(512, 384, generator=g) / 20 + torch.randn(n, 384, generator=g)
    dx, dz = random_directions(d, K, seed=1), random_directions(384, K, seed=2)
    print(f"\nfull sliced API, n={n}, d={d}, dz=384, K={K} (median of 3 runs, seconds):")
    for est in ("knn", "binning"):
        for label, call in (
            ("discrete (10 classes)", lambda est=est: sliced_mi_discrete(x, lab, dx, estimator=est)),
            ("continuous", lambda est=est: sliced_mi_continuous(x, z, dx, dz, estimator=est)),
        ):
            times = []
            for _ in range(3):
                t0 = time.perf_counter()
                call()
                times.append(time.perf_counter() - t0)
            print(f"  {est:<8}{label:<24}{sorted(times)[1]:.3f}")
    print(f"(torch threads: {torch.get_num_threads()})")


if __name__ == "__main__":
    main()
