"""`allocate`: sensitivity table + budget -> `BitPolicy`, via the ILP of Eq. 5.

resolve constraints -> enumerate choices -> build the ILP -> solve -> verify -> [refine on the
whole model, when a model and calibration batches are given] -> verify -> report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..policy import BitPolicy, Budget
from ..sensitivity.search import as_batches
from ..sensitivity.table import SensitivityTable
from .diagnose import infeasibility_error
from .ilp import build
from .refine import RefinementReport, refine
from .solvers import solve
from .spec import choices, resolve_spec
from .verify import AllocationVerificationError, verify
from .warmstart import greedy_start

# Whole-model passes of the refinement by default (when a model and calibration are given); sized so
# the SmolLM2 demo stays under 10 minutes on 2 CPU cores (benchmarks/RESULTS.md, section 7).
DEFAULT_REFINE_PASSES = 64
DEFAULT_REFINE_CHAINS = 3  # the product's (InfoQConfig) default; `allocate` itself runs one chain


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
    refinement: RefinementReport | None = None  # None: the ILP's solution as it is

    def to_dict(self) -> dict:
        data = asdict(self)
        data["budget"] = self.budget.to_dict()
        return data

    def summary(self) -> str:
        text = (f"objective {self.objective:.6g} | size {self.size_bytes / 1e6:.3f} MB | avg {self.avg_bits:.3f} bits | "
                f"{self.compression:.2f}x | {self.bitops / 1e9:.4g} GBitOps | {self.solver} {self.status} "
                f"(gap {self.mip_gap:.2g}) in {self.solve_time_s * 1e3:.1f} ms")
        r = self.refinement
        if r is not None:
            text += (f" | refined from {r.start}: KL {r.kl_ilp:.4g} (ILP) -> {r.kl_final:.4g}, {r.accepted} of "
                     f"{r.passes} passes accepted in {r.wall_s:.0f} s")
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
    model=None,
    calibration=None,
    refine_passes: int = DEFAULT_REFINE_PASSES,
    refine_candidates: int = 4,
    seed: int = 0,
    forward=None,
    gptq=None,
    validation=None,
    refine_chains: int = 1,
    refine_starts=None,
    accelerator=None,
    progress: bool = True,
) -> BitPolicy:
    """Per-layer bit-widths minimising total sensitivity under `budget` (InfoQ Eq. 5).

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
    model, calibration: the model the table was searched on (float weights) and calibration batches:
        the ILP's solution is then refined on the whole model (see `allocation.refine`): up to
        `refine_passes` candidate configurations, `refine_candidates` per round, judged by the KL
        divergence of the quantized model's outputs from the float model's; `seed`, `forward`,
        `accelerator` (candidates split over processes) and `progress` as in `search`. Without a model
        (a saved table) or with refine_passes=0 the ILP's solution is returned as it is. `gptq`: a
        `quant.gptq.GPTQCandidates` whose rounded weights the refinement judges (GPTQ packing).
        `validation`: other calibration batches; the refined configuration is kept only when its KL
        there is below the starting configurations' (otherwise the better start is). `refine_chains`:
        independent refinements (seeds `seed`, `seed + 1`, ...) from the same start, the best kept
        (lowest KL on `validation` when given, else on `calibration`). `refine_starts`: more
        configurations the refinement starts from and compares beside the ILP's and uniform,
        {name: {layer: weight bits}} or {name: BitPolicy} (for example the ILP's solution on costs
        measured another way); each must meet every constraint here.
    Returns a `BitPolicy` with `.report` an `AllocationReport`. Raises `InfeasibleBudgetError` (a ValueError)
    stating the best achievable value when the budget cannot be met, ValueError on inconsistent arguments.
    """
    spec = resolve_spec(
        table, budget, alpha=alpha, bits=bits, act_bits=act_bits, fixed_a_bits=fixed_a_bits, pin=pin,
        pin_first_last=pin_first_last, first_last_bits=first_last_bits, min_bits=min_bits, max_bits=max_bits,
        tie=tie, tie_activations=tie_activations,
    )
    if isinstance(refine_passes, bool) or not isinstance(refine_passes, int) or refine_passes < 0:
        raise ValueError(f"refine_passes must be an int >= 0 (0 = ILP only), got {refine_passes!r}")
    layer_choices = choices(spec)
    ilp = build(table, spec, layer_choices)
    start = greedy_start(ilp, spec)
    solution = solve(ilp.mip, solver, time_limit=time_limit, verbose=verbose, start=start)
    if solution.status == "infeasible":
        raise infeasibility_error(table, spec, layer_choices, solver, time_limit)

    assignment = ilp.decode(solution.x)
    totals, objective = verify(table, spec, assignment, solution.objective * ilp.objective_scale)
    refinement = None
    if refine_starts and not (model is not None and refine_passes):
        raise ValueError("refine_starts are starting points of the refinement: pass model=, calibration= and "
                         "refine_passes >= 1 too, or leave refine_starts out")
    if model is not None and refine_passes:
        if calibration is None:
            raise ValueError("refining the allocation on the model needs calibration batches: pass calibration=..., "
                             "or refine_passes=0 for the ILP's solution alone")
        batches = as_batches(calibration)
        starts = _checked_starts(table, spec, assignment, refine_starts)
        assignment, refinement = refine(model, table, spec, assignment, batches, passes=refine_passes,
                                        candidates=refine_candidates, seed=seed, forward=forward, gptq=gptq,
                                        validation=as_batches(validation), chains=refine_chains, starts=starts,
                                        accelerator=accelerator,
                                        progress=progress)
        totals, objective = verify(table, spec, assignment)

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
        refinement=refinement,
    )
    return BitPolicy({name: {"w_bits": assignment[name][0], "a_bits": assignment[name][1]} for name in spec.layers},
                     report=report, scheme=table.scheme)


def _checked_starts(table, spec, ilp_assignment, starts) -> dict[str, dict[str, int]]:
    """The caller's refinement starts (widths or policies) as {name: {layer: weight bits}}, each verified
    like the ILP's."""
    checked = {}
    for name, widths in (starts or {}).items():
        if name == "ilp" or name.startswith(("uniform-", "refined")):
            raise ValueError(f"refine_starts: {name!r} is a name the refinement uses itself; choose another")
        widths = {n: int(getattr(w, "w_bits", w)) for n, w in dict(widths).items()}
        missing, extra = [n for n in spec.layers if n not in widths], [n for n in widths if n not in spec.layers]
        if missing or extra:
            raise ValueError(f"refine_starts[{name!r}] must give every table layer a width: missing {missing[:3]}, "
                             f"not in the table {extra[:3]}")
        try:
            verify(table, spec, {n: (widths[n], ilp_assignment[n][1]) for n in spec.layers})
        except AllocationVerificationError as e:
            raise ValueError(f"refine_starts[{name!r}] does not meet this allocation's constraints: {e}") from None
        checked[name] = widths
    return checked
