"""Bit allocation (InfoQ Eq. 5): a multiple-choice knapsack ILP over per-layer bit-widths, and its
refinement on the whole model.

`allocate(table, budget, ...)` -> `BitPolicy` (with `.report`): the ILP alone; `refine(policy, model,
calibration, ...)` -> a `BitPolicy` improved by whole-model KL within the same constraints;
`pareto_sweep` / `plot_pareto` for trade-off curves. Modules: `costs` (size/BitOps/avg bits
arithmetic), `spec` (the constraints as the caller states them), `ilp` (the knapsack written from a
spec), `solvers` (Gurobi, HiGHS), `verify` (independent re-check against the spec), `diagnose`
(infeasible budgets), `moves` / `judge` / `refine` (the whole-model refinement).
"""

from .allocate import AllocationReport, allocate, embedding_starts
from .diagnose import InfeasibleBudgetError
from .moves import uniform_start
from .pareto import pareto_sweep, plot_pareto
from .refine import RefinementReport, compare_roundings, compare_with_uniform, refine
from .solvers import SolverUnavailableError
from .verify import AllocationVerificationError

__all__ = [
    "AllocationReport",
    "AllocationVerificationError",
    "InfeasibleBudgetError",
    "RefinementReport",
    "SolverUnavailableError",
    "allocate",
    "embedding_starts",
    "pareto_sweep",
    "plot_pareto",
    "compare_roundings",
    "compare_with_uniform",
    "refine",
    "uniform_start",
]
