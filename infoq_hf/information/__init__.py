"""Mutual-information estimators for InfoQ sensitivity scores.

Sliced MI (Goldfeld & Greenewald 2021) between layer activations and labels
(``sliced_mi_discrete``) or between two activation sets (``sliced_mi_continuous``),
over seeded random directions (``random_directions``).

Default 1-D estimator of these functions: equal-frequency binning + Miller-Madow
("binning", the most accurate MI value); the alternatives are "knn", Ross (2014) /
KSG (Kraskov et al. 2004), and "gaussian" (second moments), which InfoQ's probes use
by default (`InfoQOptions.estimator`): it moves smoothly with the small perturbations
a probe makes, where binning's ranks barely change. Binning was chosen with
``python -m benchmarks.studies.mi_estimator_check`` (n=2048): mean RMSE vs
truth 0.0073 (binning) vs 0.0104 (Ross k=5) against labels, 0.0184 vs 0.0179
(KSG k=5) between projections, at 0.6-0.9 s vs 1.1-16 s for n=2048, d=4096,
K=256. Full table in README.md next to this file.
"""

from .directions import random_directions
from .sliced import (
    DEFAULT_ESTIMATOR,
    ESTIMATORS,
    project,
    sliced_mi_continuous,
    sliced_mi_discrete,
    smi_continuous,
    smi_discrete,
)

__all__ = [
    "DEFAULT_ESTIMATOR",
    "ESTIMATORS",
    "project",
    "random_directions",
    "sliced_mi_continuous",
    "sliced_mi_discrete",
    "smi_continuous",
    "smi_discrete",
]
