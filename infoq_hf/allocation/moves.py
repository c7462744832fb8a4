"""The refinement's moves: budget-preserving changes of whole configurations, guided by the table's costs.

A configuration is {layer: weight bits}; activation bits stay as allocated. Layers tied together
move as one unit; pinned layers never move. A move raises one unit one width and lowers the units
with the smallest predicted cost per freed resource until every budget holds again, or lowers one
unit and spends what it frees on the units with the best predicted gain per resource. Choices are
drawn at random among the best `TOP_CHOICES` (seeded), so rejected moves are not retried.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

from ..policy import Budget
from ..sensitivity.table import SensitivityTable
from . import costs
from .spec import AllocationSpec, Choice, choices, resolve_spec

TOP_CHOICES = 4  # a move picks at random among this many best-predicted options
BUDGET_REL_TOL = 1e-9


class BudgetRows:
    """Incremental budget rows in the linear forms of `costs.layer_cost` / `costs.row_capacity`."""

    def __init__(self, table: SensitivityTable, spec: AllocationSpec):
        self.table = table
        self.kinds = [k for k in costs.BUDGET_KINDS if getattr(spec.budget, k) is not None]
        self.capacity = {k: costs.row_capacity(table, k, getattr(spec.budget, k)) for k in self.kinds}

    def usage(self, assignment: Mapping[str, Choice]) -> dict[str, float]:
        return {
            k: sum(costs.layer_cost(self.table, k, n, w, a) for n, (w, a) in assignment.items()) for k in self.kinds
        }

    def delta(self, names, old: int, new: int, a_of) -> dict[str, float]:
        """Change of every row when layers `names` go from `old` to `new` weight bits."""
        return {
            k: sum(
                costs.layer_cost(self.table, k, n, new, a_of[n]) - costs.layer_cost(self.table, k, n, old, a_of[n])
                for n in names
            )
            for k in self.kinds
        }

    def fits(self, usage: Mapping[str, float]) -> bool:
        return all(usage[k] <= self.capacity[k] + BUDGET_REL_TOL * max(abs(self.capacity[k]), 1.0) for k in self.kinds)

    def weight(self, delta: Mapping[str, float]) -> float:
        """One scalar resource for ranking moves: the change relative to each budget, summed."""
        return sum(abs(delta[k]) / max(abs(self.capacity[k]), 1e-300) for k in self.kinds) or 1e-300


class MoveUnits:
    """Layers that move together (a tie group, or one layer) and the weight widths each unit may take."""

    def __init__(self, spec: AllocationSpec, assignment: Mapping[str, Choice]):
        layer_choices = choices(spec)
        tied = {n: g for g in spec.w_ties for n in g}
        self.widths: dict[tuple[str, ...], list[int]] = {}
        for name in spec.layers:
            group = tied.get(name, (name,))
            if group in self.widths or any(n in spec.pins_w for n in group):
                continue
            # activation bits stay as allocated: only weight widths move
            allowed = [{w for w, a in layer_choices[n] if a == assignment[n][1]} for n in group]
            self.widths[group] = sorted(set.intersection(*allowed))
        self.groups = [g for g, ws in self.widths.items() if len(ws) > 1]


def uniform_start(
    table: SensitivityTable, budget: Budget, *, pin_first_last="auto", first_last_bits=None, pin=None
) -> dict[str, int] | None:
    """The refinement's uniform start under `budget`, {layer: weight bits}: every free layer at the
    widest width they all admit whose configuration fits every budget, pinned layers at their pins
    (pins as `allocate` resolves them). None when no uniform width fits, or for W/A allocations.
    For an ILP-only allocation the pipeline rounds GPTQ's candidates on the inputs this configuration
    gives (`gptq_candidates(..., prefix_bits=)`), closer to what sequential packing sees than float inputs."""
    spec = resolve_spec(table, budget, pin=pin, pin_first_last=pin_first_last, first_last_bits=first_last_bits)
    if spec.mixed:
        return None
    a_bits = spec.a_candidates[0] if spec.a_candidates else None
    base = {n: (spec.pins_w.get(n, spec.w_options(n)[0]), spec.pins_a.get(n, a_bits)) for n in spec.layers}
    a_of = {n: c[1] for n, c in base.items()}
    found = widest_uniform(MoveUnits(spec, base), {n: c[0] for n, c in base.items()}, BudgetRows(table, spec), a_of)
    return None if found is None else found[1]


def widest_uniform(units: MoveUnits, ilp: Mapping[str, int], budget: BudgetRows, a_of):
    """(width, configuration): the widest width every free unit admits that fits the budget (pinned layers
    keep their widths in `ilp`); None when none fits."""
    common = None
    for ws in units.widths.values():
        common = set(ws) if common is None else common & set(ws)
    for w in sorted(common or (), reverse=True):
        candidate = dict(ilp)
        for group in units.widths:
            for n in group:
                candidate[n] = w
        if budget.fits(budget.usage({n: (b, a_of[n]) for n, b in candidate.items()})):
            return w, candidate
    return None


def propose(
    rng: random.Random,
    units: MoveUnits,
    table: SensitivityTable,
    budget: BudgetRows,
    current: Mapping[str, int],
    a_of,
    seen: set,
    tries: int = 20,
) -> dict[str, int] | None:
    """A new budget-feasible configuration one guided move away from `current`, or None."""
    for _ in range(tries):
        move = (
            _raise_first(rng, units, table, budget, current, a_of)
            if rng.random() < 0.5
            else _lower_first(rng, units, table, budget, current, a_of)
        )
        if move is not None and tuple(sorted(move.items())) not in seen:
            return move
    return None


def _step(units: MoveUnits, group, config, direction: int):
    ws = units.widths[group]
    i = ws.index(config[group[0]]) + direction
    return ws[i] if 0 <= i < len(ws) else None


def _options(units, table, budget, config, a_of, direction: int, exclude) -> list[tuple[float, tuple, int]]:
    """(predicted cost change per resource, unit, new width) for every unit that can move one width."""
    out = []
    for group in units.groups:
        if group in exclude:
            continue
        new = _step(units, group, config, direction)
        if new is None:
            continue
        old = config[group[0]]
        d_score = sum(table.w(n, new) - table.w(n, old) for n in group)
        d_res = budget.weight(budget.delta(group, old, new, a_of))
        out.append((d_score / d_res, group, new))
    # ascending: raising, the most predicted cost saved per resource spent first (most negative);
    # lowering, the least predicted cost added per resource freed first
    return sorted(out, key=lambda t: t[0])


def _pick(rng: random.Random, options: list):
    return options[rng.randrange(min(TOP_CHOICES, len(options)))] if options else None


def _set_unit(budget: BudgetRows, config: dict, usage: dict, group, width: int, a_of) -> dict:
    """Put `group` at `width` in `config`; returns the budget usage after the change."""
    delta = budget.delta(group, config[group[0]], width, a_of)
    for n in group:
        config[n] = width
    return {k: usage[k] + delta[k] for k in usage}


def _first_step(rng, units, table, budget, current, a_of, direction: int):
    """The move's first step, one width up or down: (config, usage, moved unit), or None."""
    config = dict(current)
    step = _pick(rng, _options(units, table, budget, config, a_of, direction, ()))
    if step is None:
        return None
    _, group, width = step
    usage = _set_unit(budget, config, budget.usage({n: (b, a_of[n]) for n, b in current.items()}), group, width, a_of)
    return config, usage, group


def _raise_first(rng, units, table, budget, current, a_of):
    """Raise one unit a width, then lower others (any number of widths) until every budget holds."""
    first = _first_step(rng, units, table, budget, current, a_of, +1)
    if first is None:
        return None
    config, usage, group = first
    while not budget.fits(usage):
        down = _pick(rng, _options(units, table, budget, config, a_of, -1, {group}))
        if down is None:
            return None
        usage = _set_unit(budget, config, usage, down[1], down[2], a_of)
    return config


def _lower_first(rng, units, table, budget, current, a_of):
    """Lower one unit a width, then spend what it frees raising others while every budget holds."""
    first = _first_step(rng, units, table, budget, current, a_of, -1)
    if first is None:
        return None
    config, usage, group = first
    raised = False
    while True:
        fitting = [
            (g, w)
            for _, g, w in _options(units, table, budget, config, a_of, +1, {group})
            if budget.fits(_set_unit(budget, dict(config), usage, g, w, a_of))
        ]
        if not fitting:
            return config if raised else None
        g, w = fitting[rng.randrange(min(TOP_CHOICES, len(fitting)))]
        usage = _set_unit(budget, config, usage, g, w, a_of)
        raised = True
