"""Bit allocation (InfoQ Eq. 5): a multiple-choice knapsack ILP over per-layer bit-widths.

`allocate(table, budget, ...)` -> `BitPolicy` (with `.report`); `pareto_sweep` / `plot_pareto` for
trade-off curves. Modules: `costs` (size/BitOps/avg bits arithmetic), `spec` (the constraints as the
caller states them), `ilp` (the knapsack written from a spec), `solvers` (Gurobi, HiGHS), `verify`
(independent re-check against the spec), `diagnose` (infeasible budgets).
"""

from .allocate import AllocationReport, allocate
from .diagnose import InfeasibleBudgetError
from .pareto import pareto_sweep, plot_pareto
from .refine import uniform_start
from .solvers import SolverUnavailableError
from .verify import AllocationVerificationError

__all__ = [
    "AllocationReport",
    "AllocationVerificationError",
    "InfeasibleBudgetError",
    "SolverUnavailableError",
    "allocate",
    "uniform_start",
    "pareto_sweep",
    "plot_pareto",
]
