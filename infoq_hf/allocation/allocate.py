"""`allocate`: sensitivity table + budget -> `BitPolicy`, via the ILP of Eq. 5.

resolve constraints -> enumerate choices -> build the ILP -> solve -> verify -> report. The policy's
report carries the resolved constraints and the table, so `refine` can improve it on the whole model
within the same constraints.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace

from ..policy import BitPolicy, Budget
from ..sensitivity.table import SensitivityTable
from .diagnose import InfeasibleBudgetError, infeasibility_error
from .ilp import build
from .refine import RefinementReport
from .solvers import solve
from .spec import AllocationSpec, choices, resolve_spec
from .verify import verify
from .warmstart import greedy_start


@dataclass(frozen=True)
class AllocationReport:
    """How a policy was found and what it costs (size as a `size_bytes` budget counts it)."""

    objective: float  # sum S_w (+ alpha * S_a), recomputed from the table
    size_bytes: int
    bitops: int
    avg_bits: float
    compression: float
    solver: str
    solve_time_s: float
    mip_gap: float
    status: str  # "optimal" or "time_limit" (best found, gap > 0 possible)
    budget: Budget
    alpha: float = 1.0
    num_variables: int = 0
    num_constraints: int = 0
    refinement: RefinementReport | None = None  # None: the ILP's solution as it is (see `refine`)
    # the problem solved, for `refine` (neither compared nor serialised)
    spec: AllocationSpec | None = field(default=None, repr=False, compare=False)
    table: SensitivityTable | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("spec", "table")}
        data["budget"] = self.budget.to_dict()
        data["refinement"] = None if self.refinement is None else asdict(self.refinement)
        return data

    def summary(self) -> str:
        text = (
            f"objective {self.objective:.6g} | size {self.size_bytes / 1e6:.3f} MB | avg {self.avg_bits:.3f} bits | "
            f"{self.compression:.2f}x | {self.bitops / 1e9:.4g} GBitOps | {self.solver} {self.status} "
            f"(gap {self.mip_gap:.2g}) in {self.solve_time_s * 1e3:.1f} ms"
        )
        r = self.refinement
        if r is not None:
            text += (
                f" | refined from {r.start}: KL {r.kl_ilp:.4g} (ILP) -> {r.kl_final:.4g}, {r.accepted} of "
                f"{r.passes} passes accepted in {r.wall_s:.0f} s"
            )
            if r.kl_validation:
                text += f", held-out check kept {r.kept}"
        return text


def allocate(
    table: SensitivityTable,
    budget: Budget,
    *,
    solver: str = "auto",
    alpha: float = 1.0,
    bits=None,
    act_bits=None,
    fixed_a_bits: int | None = None,
    pin=None,
    pin_first_last="auto",
    first_last_bits=None,
    min_bits=None,
    max_bits=None,
    tie=None,
    tie_activations=None,
    time_limit: float | None = None,
    verbose: bool = False,
) -> BitPolicy:
    """Per-layer bit-widths minimising total sensitivity under `budget` (InfoQ Eq. 5): the ILP alone.

    table: scores S_w(l, b) (and S_a for W/A). budget: `Budget` (avg_bits, size_bytes, bitops,
        compression; any combination) or its dict form.
    solver: "auto" (Gurobi if installed and licensed for the model's size, else HiGHS), "gurobi", "highs".
    alpha: weight of the activation scores in the objective (W/A only).
    bits: candidate weight bits (subset of table.bits; default all).
    act_bits: candidate activation bits; given -> W/A mixed precision over (w, a) pairs; None -> weights only.
    fixed_a_bits: weights-only: the activation width every layer runs at (for BitOps; None = float, 32).
    pin: {name: w_bits} or {name: (w_bits, a_bits)}; overrides the first/last pins.
    pin_first_last: pin the first and last table layers (True / False / "auto" = on a CNN (first layer a
        conv2d), each end layer that holds at most 5% of the weights) to `first_last_bits` (default 8 bits,
        or the largest candidate; W/A: same for activations; an int or a (w, a) pair).
    min_bits / max_bits: weight-bit bounds, an int for all layers or {name: int}.
    tie: groups of layer names that share weight bits; tie_activations: groups that share activation bits
        (e.g. the layers feeding one residual add).
    time_limit: seconds; on expiry the best allocation found is returned with status "time_limit".
    Returns a `BitPolicy` with `.report` an `AllocationReport`; `refine(policy, model, calibration)`
    improves it on the whole model within the same constraints. Raises `InfeasibleBudgetError` (a
    ValueError) stating the best achievable value when the budget cannot be met, ValueError on
    inconsistent arguments.
    """
    spec = resolve_spec(
        table,
        budget,
        alpha=alpha,
        bits=bits,
        act_bits=act_bits,
        fixed_a_bits=fixed_a_bits,
        pin=pin,
        pin_first_last=pin_first_last,
        first_last_bits=first_last_bits,
        min_bits=min_bits,
        max_bits=max_bits,
        tie=tie,
        tie_activations=tie_activations,
    )
    return _solved(table, spec, solver=solver, time_limit=time_limit, verbose=verbose)


def embedding_starts(policy: BitPolicy, *, solver: str = "auto", time_limit: float | None = None) -> dict:
    """Refinement starts for a policy `allocate` returned: the ILP solved again with each embedding of its
    table pinned at every candidate width above the one it got, where the budget allows, as
    {"pin:<layer>=<bits>": {layer: weight bits}}. An embedding's score comes from the rows of the search's
    tokens only, so the ILP under-rates what narrowing it costs elsewhere; the whole-model KL of
    `refine` / `compare_with_uniform` sees it and decides between these and the ILP's own choice."""
    report = getattr(policy, "report", None)
    if getattr(report, "spec", None) is None:
        raise ValueError("embedding_starts needs a policy that allocate(table, budget, ...) returned")
    spec, table, starts = report.spec, report.table, {}
    # the refinement moves weight widths only: activation widths stay the ILP's
    pins_a = {**spec.pins_a, **{n: policy[n].a_bits for n in spec.layers}} if spec.mixed else spec.pins_a
    for name in spec.layers:
        if table.layers[name].get("kind") != "embedding" or name in spec.pins_w:
            continue
        for bits in [b for b in spec.w_options(name) if b > policy[name].w_bits]:
            pinned = replace(spec, pins_w={**spec.pins_w, name: bits}, pins_a=pins_a)
            try:
                solved = _solved(table, pinned, solver=solver, time_limit=time_limit)
            except InfeasibleBudgetError:
                break  # wider cannot fit either
            starts[f"pin:{name}={bits}"] = {n: solved[n].w_bits for n in spec.layers}
    return starts


def _solved(table: SensitivityTable, spec, *, solver: str, time_limit: float | None, verbose: bool = False):
    """The ILP of `spec` solved, checked and reported as a `BitPolicy`."""
    layer_choices = choices(spec)
    ilp = build(table, spec, layer_choices)
    start = greedy_start(ilp, spec)
    solution = solve(ilp.mip, solver, time_limit=time_limit, verbose=verbose, start=start)
    if solution.status == "infeasible":
        raise infeasibility_error(table, spec, layer_choices, solver, time_limit)

    assignment = ilp.decode(solution.x)
    totals, objective = verify(table, spec, assignment, solution.objective * ilp.objective_scale)
    report = AllocationReport(
        objective=objective,
        size_bytes=totals.size_bytes,
        bitops=totals.bitops,
        avg_bits=totals.avg_bits,
        compression=totals.compression,
        solver=solution.solver,
        solve_time_s=solution.solve_time_s,
        mip_gap=solution.mip_gap,
        status=solution.status,
        budget=spec.budget,
        alpha=spec.alpha,
        num_variables=ilp.mip.num_vars,
        num_constraints=ilp.mip.num_rows,
        spec=spec,
        table=table,
    )
    return BitPolicy(
        {name: {"w_bits": assignment[name][0], "a_bits": assignment[name][1]} for name in spec.layers},
        report=report,
        scheme=table.scheme,
    )
