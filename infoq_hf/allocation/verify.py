"""Solver-independent check of an allocation against the caller's constraints.

Reads only the `AllocationSpec` (the constraints as the caller stated them) and the
table, never the ILP, so a formulation bug or a solver tolerance slip shows up here
instead of in a quantized model.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..sensitivity.table import SensitivityTable
from . import costs
from .spec import AllocationSpec, Choice

# Solvers accept rows violated by ~1e-6 relative (feasibility/integrality tolerances).
BUDGET_REL_TOL = 1e-6
OBJECTIVE_REL_TOL = 1e-6


class AllocationVerificationError(RuntimeError):
    """A solver returned an allocation that breaks a constraint or misstates its objective."""


def verify(
    table: SensitivityTable,
    spec: AllocationSpec,
    assignment: Mapping[str, Choice],
    solver_objective: float | None = None,
) -> tuple[costs.Totals, float]:
    """Raise `AllocationVerificationError` listing every violation; return (totals, objective)."""
    problems: list[str] = []
    missing = [n for n in spec.layers if n not in assignment]
    extra = [n for n in assignment if n not in spec.layers]
    if missing:
        problems.append(f"no bits chosen for layers {missing[:5]}")
    if extra:
        problems.append(f"bits chosen for layers outside the table {extra[:5]}")
    if missing or extra:
        raise AllocationVerificationError("; ".join(problems))

    for name in spec.layers:
        w, a = assignment[name]
        if w not in spec.w_candidates:
            problems.append(f"{name}: weight bits {w} not among the candidates {list(spec.w_candidates)}")
        if a not in spec.a_candidates:
            problems.append(f"{name}: activation bits {a} not among {list(spec.a_candidates)}")
        if name in spec.pins_w and w != spec.pins_w[name]:
            problems.append(f"{name}: pinned to {spec.pins_w[name]} weight bits, got {w}")
        if name in spec.pins_a and a != spec.pins_a[name]:
            problems.append(f"{name}: pinned to {spec.pins_a[name]} activation bits, got {a}")
        if name in spec.min_bits and w < spec.min_bits[name]:
            problems.append(f"{name}: {w} bits below min_bits {spec.min_bits[name]}")
        if name in spec.max_bits and w > spec.max_bits[name]:
            problems.append(f"{name}: {w} bits above max_bits {spec.max_bits[name]}")
    for groups, pos, what in ((spec.w_ties, 0, "weight"), (spec.a_ties if spec.mixed else (), 1, "activation")):
        for group in groups:
            seen = {assignment[n][pos] for n in group}
            if len(seen) > 1:
                problems.append(f"tied layers {list(group)} got different {what} bits {sorted(seen)}")

    tot = costs.totals(table, assignment)
    for kind in costs.BUDGET_KINDS:
        limit = getattr(spec.budget, kind)
        if limit is None:
            continue
        value = tot.of(kind)
        if kind == "compression":
            if value < limit * (1 - BUDGET_REL_TOL):
                problems.append(f"compression {value:.6g}x below the budget {limit:.6g}x")
        elif value > limit * (1 + BUDGET_REL_TOL):
            problems.append(f"{kind} {value:.10g} over the budget {limit:.10g}")

    objective = costs.objective(table, assignment, spec.alpha, spec.mixed)
    if solver_objective is not None:
        scale = max(abs(objective), _largest_score(table, spec), 1e-300)
        if abs(objective - solver_objective) > OBJECTIVE_REL_TOL * scale:
            problems.append(f"solver objective {solver_objective!r} differs from the table's {objective!r}")

    if problems:
        raise AllocationVerificationError("the allocation fails verification: " + "; ".join(problems))
    return tot, objective


def _largest_score(table: SensitivityTable, spec: AllocationSpec) -> float:
    best = 0.0
    for name in spec.layers:
        info = table.layers[name]
        best = max(best, max(abs(s) for s in info["w"].values()))
        if spec.mixed:
            best = max(best, spec.alpha * max(abs(s) for s in info["a"].values()))
    return best
