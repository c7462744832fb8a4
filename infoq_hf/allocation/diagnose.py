"""Why a budget is infeasible: the best each budgeted quantity can do under the other constraints.

Each quantity is a sum of per-layer costs, so without ties its minimum is the sum
of per-layer minima; ties couple layers, and then a small ILP (the same model with
that cost as objective and no budget rows) gives the exact minimum.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..sensitivity.table import SensitivityTable
from . import costs
from .ilp import build
from .solvers import solve
from .spec import AllocationSpec, Choice


class InfeasibleBudgetError(ValueError):
    """No allocation meets the budget. `achievable[kind]` is the best value each budgeted quantity
    can reach under the pins/bounds/ties: the smallest avg bits, size, BitOps; the largest compression."""

    def __init__(self, message: str, achievable: Mapping[str, float]):
        super().__init__(message)
        self.achievable = dict(achievable)


def _smallest_row(table, spec, layer_choices, kind, solver, time_limit) -> float:
    """The minimum of the budget row of `kind` (its linear form, see `costs.layer_cost`)."""
    coupled = spec.w_ties or (spec.mixed and spec.a_ties)
    if not coupled:
        return sum(min(costs.layer_cost(table, kind, n, *c) for c in layer_choices[n]) for n in spec.layers)
    model = build(table, spec, layer_choices, minimise=kind, with_budgets=False)
    sol = solve(model.mip, solver, time_limit=time_limit)
    if sol.x is None:  # cannot happen: ties were already checked to leave every layer an option
        raise RuntimeError("the pins and ties admit no allocation at all")
    picked = model.decode(sol.x)
    return sum(costs.layer_cost(table, kind, n, *c) for n, c in picked.items())


def _describe(kind: str, value: float) -> str:
    if kind == "avg_bits":
        return f"{value:.4g} bits"
    if kind == "size_bytes":
        return f"{round(value):,} bytes ({value / 1e6:.4g} MB)"
    if kind == "bitops":
        return f"{round(value):,} BitOps ({value / 1e9:.4g} GBitOps)"
    return f"{value:.4g}x"


def _describe_limit(kind: str, value: float) -> str:
    if kind == "avg_bits":
        return f"average bits {value:.4g}"
    if kind == "compression":
        return f"compression {value:.4g}x"
    return f"{_NAMES[kind]} budget {_describe(kind, value)}"


_NAMES = {"avg_bits": "average", "size_bytes": "size", "bitops": "BitOps", "compression": "compression"}


def infeasibility_error(
    table: SensitivityTable,
    spec: AllocationSpec,
    layer_choices: Mapping[str, list[Choice]],
    solver: str = "auto",
    time_limit: float | None = None,
) -> InfeasibleBudgetError:
    """Build the error for a budget the solver found infeasible, naming each violated budget's best value."""
    achievable, violated = {}, []
    for kind in costs.BUDGET_KINDS:
        limit = getattr(spec.budget, kind)
        if limit is None:
            continue
        best = costs.row_to_budget(table, kind, _smallest_row(table, spec, layer_choices, kind, solver, time_limit))
        achievable[kind] = best
        too_tight = best < limit if kind == "compression" else best > limit
        if too_tight:
            word = "largest" if kind == "compression" else "smallest"
            violated.append(
                f"{_describe_limit(kind, limit)} is infeasible: the {word} achievable {_NAMES[kind]} "
                f"under these constraints is {_describe(kind, best)}"
            )
    constraints = (
        "pins, min/max bits and ties"
        if (spec.pins_w or spec.min_bits or spec.max_bits or spec.w_ties)
        else "the candidate bits"
    )
    if violated:
        message = "; ".join(violated) + f" (given {constraints}). Loosen the budget or the constraints."
    else:
        each = ", ".join(f"{_NAMES[k]} {_describe(k, v)}" for k, v in achievable.items())
        message = (
            f"the budgets {spec.budget.to_dict()} are each achievable alone (best: {each}) but not all "
            f"at once under {constraints}; loosen one of them"
        )
    return InfeasibleBudgetError(message, achievable)
