"""The ILP of an `AllocationSpec`: InfoQ's multiple-choice knapsack (Eq. 5).

`build` writes one binary per admissible choice (see `spec.choices`), exactly one per layer, equal
bits across tie groups and one row per budget; `AllocationModel.decode` reads a solution back.
The verifier never reads this module: it re-checks solutions against the spec.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..sensitivity.table import SensitivityTable
from . import costs
from .solvers import MIP, MIPBuilder
from .spec import AllocationSpec, Choice


@dataclass
class AllocationModel:
    """The ILP and how to read its variables back: variable k is layer `var_layer[k]` at `var_choice[k]`."""

    mip: MIP
    var_layer: list[str]
    var_choice: list[Choice]
    objective_scale: float  # solver objective * scale = objective in table units
    spans: dict[str, tuple[int, int]]  # layer -> its variables [lo, hi)
    budget_rows: list[tuple[np.ndarray, float]]  # (coefficients over all variables, rhs), as in the MIP

    def decode(self, x: np.ndarray) -> dict[str, Choice]:
        """The chosen (w, a) per layer; raises when the solution is not one choice per layer."""
        picked: dict[str, Choice] = {}
        for k in np.flatnonzero(x > 0.5):
            name = self.var_layer[k]
            if name in picked:
                raise RuntimeError(f"the solver chose two bit-widths for layer {name!r}")
            picked[name] = self.var_choice[k]
        return picked


def _score(table: SensitivityTable, spec: AllocationSpec, name: str, choice: Choice) -> float:
    w, a = choice
    return table.w(name, w) + (spec.alpha * table.a(name, a) if spec.mixed else 0.0)


def build(
    table: SensitivityTable,
    spec: AllocationSpec,
    layer_choices: Mapping[str, list[Choice]],
    *,
    minimise: str = "score",
    with_budgets: bool = True,
) -> AllocationModel:
    """The ILP. `minimise="score"` is Eq. 5; a budget kind ("size_bytes", ...) minimises that row
    instead (used to report the smallest achievable cost when a budget is infeasible)."""
    var_layer, var_choice, span = [], [], {}
    for name in spec.layers:
        start = len(var_layer)
        for c in layer_choices[name]:
            var_layer.append(name)
            var_choice.append(c)
        span[name] = (start, len(var_layer))

    if minimise == "score":
        raw = np.array([_score(table, spec, n, c) for n, c in zip(var_layer, var_choice)])
    else:
        raw = np.array(
            [costs.layer_cost(table, minimise, n, *c) for n, c in zip(var_layer, var_choice)], dtype=np.float64
        )
    # scale the objective to O(1) so solver tolerances mean the same for any score magnitude
    scale = float(np.max(np.abs(raw))) if raw.size and np.max(np.abs(raw)) > 0 else 1.0
    builder = MIPBuilder(raw / scale)

    for name in spec.layers:
        lo, hi = span[name]
        builder.add_row(np.arange(lo, hi), np.ones(hi - lo), 1.0, 1.0)

    for groups, pos in ((spec.w_ties, 0), (spec.a_ties if spec.mixed else (), 1)):
        for group in groups:
            values = sorted({c[pos] for c in layer_choices[group[0]]}, key=lambda v: (v is None, v))
            head = [k for k in range(*span[group[0]])]
            for other in group[1:]:
                body = [k for k in range(*span[other])]
                # one row per bit value but the last: both sides sum to one, so it follows
                for v in values[:-1]:
                    mine = [k for k in body if var_choice[k][pos] == v]
                    theirs = [k for k in head if var_choice[k][pos] == v]
                    builder.add_row(mine + theirs, [1.0] * len(mine) + [-1.0] * len(theirs), 0.0, 0.0)

    budget_rows = _budget_rows(table, spec, var_layer, var_choice, span) if with_budgets else []
    for coef, cap in budget_rows:
        nz = np.flatnonzero(coef)
        builder.add_row(nz, coef[nz], -np.inf, cap)

    return AllocationModel(builder.build(), var_layer, var_choice, scale, span, budget_rows)


def _budget_rows(table, spec, var_layer, var_choice, span) -> list[tuple[np.ndarray, float]]:
    """One `coef @ x <= cap` row per budget, rewritten so the solver sees as little as it needs.

    Each layer takes exactly one choice, so subtracting its cheapest choice's cost from all of
    its choices (and the sum of those minima from the capacity) changes no solution. After that
    shift, rows that are multiples of each other are the same constraint with different
    capacities: for an LLM, size (n*b/8 + fixed scales), average bits (n*b) and BitOps with
    uniform sequence length (MACs = n*T) all are. Only the tightest is kept; left in, such
    near-parallel rows make the solver's optimality proof many times slower. Rows are scaled
    to O(1) so solver tolerances are relative. The verifier re-checks every budget regardless.
    """
    rows = []
    for kind in costs.BUDGET_KINDS:
        limit = getattr(spec.budget, kind)
        if limit is None:
            continue
        coef = np.array([costs.layer_cost(table, kind, n, *c) for n, c in zip(var_layer, var_choice)], dtype=np.float64)
        cap = costs.row_capacity(table, kind, limit)
        for lo, hi in span.values():
            if hi > lo:
                floor = coef[lo:hi].min()
                coef[lo:hi] -= floor
                cap -= floor
        norm = float(coef.max()) if coef.size and coef.max() > 0 else 1.0
        rows.append((coef / norm, cap / norm))

    kept: list[tuple[np.ndarray, float]] = []
    for coef, cap in sorted(rows, key=lambda r: r[1]):  # tightest first among parallel rows (equal scaling)
        if not coef.any():
            if cap < 0:
                kept.append((coef, cap))  # unsatisfiable: leave it to the solver to report infeasibility
            continue
        if not any(_same_direction(coef, other) for other, _ in kept):
            kept.append((coef, cap))
    return kept


def _same_direction(a: np.ndarray, b: np.ndarray) -> bool:
    """True when a and b (both scaled to max 1, nonnegative) are equal up to float rounding."""
    return bool(np.array_equal(a > 0, b > 0) and np.allclose(a, b, rtol=1e-12, atol=1e-15))
