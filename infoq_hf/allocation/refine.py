"""`refine`: improve an allocated policy on the whole model, within every constraint it was allocated under.

Summing single-layer costs misses how layers' errors compound (benchmarks/RESULTS.md, `gptq_aware`).
So after the ILP, the refinement tries moves that raise some layers and lower others within every
budget (pins, bounds and ties kept; `allocation.moves`), runs each candidate configuration as a
complete fake-quantized model over the calibration batches (`allocation.judge`), and keeps a move only
when the KL divergence of the model's outputs from the float model's goes down (EvoPress and CASA
judge whole configurations the same way).

- Starts: the ILP's assignment, where one fits the budget the widest uniform assignment, and any
  other configurations the caller gives (`starts`: e.g. the ILP's solution on costs measured another
  way); the one with the lowest KL is refined, and all of them stand in the held-out check.
- Rounds: `candidates` distinct moves are drawn from the current configuration, evaluated (split
  over `accelerate` processes: the result does not depend on the number of processes), and the
  best is accepted if it lowers the KL. `passes` bounds the evaluations, the starts included.
- Screening (multi-fidelity selection, as EvoPress does): with `screen`, each round's moves are first
  scored on the first `screen` calibration batches only, and the `confirmed` best of them on all;
  the round then accepts as above. A judge of many batches costs a few full passes per round, not one
  per move. `passes` then bounds the full evaluations; the screenings are counted apart.
- Chains: the search is random, and its outcome varies with the seed by more than the gains it is
  after. `chains` independent searches run from the same start, each as long as one; the held-out
  check below picks among them.
- Held-out check: moves that win on a few calibration windows can be noise, or overfit them. Given
  `validation` batches (other calibration data, never the judge's), the chains' ends and the starts
  are scored there once more and the lowest KL is kept; without them, the chain that ended lowest
  on the judge's batches.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace

import torch
from tqdm.auto import tqdm

from ..policy import BitPolicy
from ..quant.apply import default_forward
from ..sensitivity.search import as_batches
from ..sensitivity.table import SensitivityTable
from .judge import KLJudge
from .moves import BudgetRows, MoveUnits, propose, widest_uniform
from .spec import AllocationSpec, Choice
from .verify import AllocationVerificationError, verify


@dataclass(frozen=True)
class RefinementReport:
    """What the refinement did; recorded in the allocation report and the checkpoint's summary."""

    passes: int  # candidate configurations evaluated, the starts included
    accepted: int
    start: str  # "ilp" or "uniform-<bits>"
    kl_ilp: float
    kl_uniform: float | None
    kl_final: float
    calibration_batches: int
    prefix_replay: bool
    wall_s: float
    seed: int
    rounding: str = "rtn"  # whose rounding the candidates were evaluated with
    judge_inputs: str | None = None  # GPTQ's candidates: the inputs they were rounded on ("float", "prefix ...")
    kl_starts: dict | None = None  # judge KL of each start compared ("ilp", "uniform-<bits>", the caller's)
    kept: str = "refined"  # the chain kept ("refined", or "refined-<i>" of several), or the start ("ilp",
    # "uniform-<bits>", a caller's) the held-out check preferred
    chains: int = 1
    screened: int = 0  # moves scored on the first `screen` batches only (multi-fidelity selection)
    kl_validation: dict | None = None  # KL on the validation batches of each configuration compared
    validation_batches: int = 0
    # GPTQ packing of a kept allocation that is not the candidates' uniform start: the KL with its layers
    # rounded on that start's inputs and on its own (a second, sequential pass), and the rounding packed
    kl_roundings: dict | None = None
    rounding_kept: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def refine(
    policy: BitPolicy,
    model: torch.nn.Module,
    calibration,
    *,
    passes: int = 64,
    chains: int = 1,
    validation=None,
    starts: Mapping | None = None,
    gptq=None,
    seed: int = 0,
    candidates: int = 4,
    screen: int | None = None,
    confirmed: int = 1,
    forward: Callable | None = None,
    accelerator=None,
    progress: bool = True,
) -> BitPolicy:
    """`policy` (as `allocate` returned it) refined on the whole `model` over `calibration` batches.

    The refinement keeps every constraint `allocate` solved under (budget, pins, bounds, ties) and moves
    with the costs of the table it allocated on (both travel in `policy.report`). `model`: the float
    model the table was searched on. Up to `passes` candidate configurations per chain, `candidates`
    per round, judged by the KL divergence of the quantized model's outputs from the float model's;
    with `screen` (a number of batches), each round's `candidates` moves are scored on the first
    `screen` batches and its `confirmed` best on all of them (`passes` counts these full evaluations).
    `chains`: independent refinements (seeds `seed`, `seed + 1`, ...) from the same start; the one kept
    has the lowest KL on `validation` (other calibration batches, never judged on) when given, else on
    `calibration`; with `validation`, a start that beats every chain there is kept instead. `starts`:
    more configurations to start from and compare beside the ILP's and the widest uniform one,
    {name: {layer: weight bits}} or {name: BitPolicy}, each meeting every constraint. `gptq`: a
    `quant.gptq.GPTQCandidates` (with weights) whose rounded weights are judged, for GPTQ packing.
    `forward`, `accelerator` (candidates split over processes) and `progress` as in `search`.
    Returns a new `BitPolicy` whose `report` is the allocation's with the refined totals and
    `report.refinement` saying what the refinement did."""
    report = getattr(policy, "report", None)
    if getattr(report, "spec", None) is None or getattr(report, "table", None) is None:
        raise ValueError(
            "refine starts from a policy that allocate(table, budget, ...) returned: its report carries "
            "the constraints and the table the refinement keeps to"
        )
    if isinstance(passes, bool) or not isinstance(passes, int) or passes < 1:
        raise ValueError(f"refine needs passes >= 1 (an int), got {passes!r}")
    table, spec = report.table, report.spec
    assignment = {n: (policy[n].w_bits, policy[n].a_bits) for n in spec.layers}
    batches = as_batches(calibration)
    checked = _checked_starts(table, spec, assignment, starts)
    assignment, refinement = _refine_assignment(
        model,
        table,
        spec,
        assignment,
        batches,
        passes=passes,
        candidates=candidates,
        screen=screen,
        confirmed=confirmed,
        seed=seed,
        forward=forward,
        gptq=gptq,
        validation=as_batches(validation),
        chains=chains,
        starts=checked,
        accelerator=accelerator,
        progress=progress,
    )
    totals, objective = verify(table, spec, assignment)
    refined = replace(
        report,
        objective=objective,
        size_bytes=totals.size_bytes,
        bitops=totals.bitops,
        avg_bits=totals.avg_bits,
        compression=totals.compression,
        refinement=refinement,
    )
    return BitPolicy(
        {name: {"w_bits": assignment[name][0], "a_bits": assignment[name][1]} for name in spec.layers},
        report=refined,
        scheme=policy.scheme,
    )


def compare_with_uniform(
    policy: BitPolicy,
    model: torch.nn.Module,
    calibration,
    *,
    gptq=None,
    forward: Callable | None = None,
    starts: Mapping | None = None,
    accelerator=None,
    progress: bool = True,
) -> BitPolicy:
    """`policy` (as `allocate` returned it) or the widest uniform configuration meeting the same
    constraints, whichever runs closer to the float model on `calibration` (KL of the outputs, every
    table layer fake-quantized; `gptq` and `starts` as in `refine`: the caller's starts stand too). The
    ILP adds single-layer costs; where layers' errors compound, an allocation that looks cheaper can be
    worse on the whole model than uniform. It is `refine` with the starts evaluated and no moves;
    `report.refinement` says which was kept."""
    return refine(
        policy,
        model,
        calibration,
        passes=2 + len(starts or {}),
        gptq=gptq,
        forward=forward,
        starts=starts,
        accelerator=accelerator,
        progress=progress,
    )


def compare_roundings(
    policy: BitPolicy,
    model: torch.nn.Module,
    calibration,
    roundings: Mapping[str, object],
    *,
    table: SensitivityTable | None = None,
    forward: Callable | None = None,
) -> dict[str, float]:
    """KL to the float model on `calibration` of `policy` with each rounding of `roundings` ({name:
    `quant.gptq.GPTQCandidates` with weights at the policy's widths}) giving every layer of `table` its
    weight (default: the table of the policy's report, as `allocate` or `refine` returned it)."""
    table = table if table is not None else getattr(getattr(policy, "report", None), "table", None)
    if table is None:
        raise ValueError("compare_roundings needs the table whose layers it judges: pass table= or an allocated policy")
    widths = {n: policy[n].w_bits for n in table.layers}
    batches = as_batches(calibration)
    if not batches:
        raise ValueError("compare_roundings needs calibration batches")
    was_training = model.training
    model.eval()
    judge, kls = None, {}
    try:
        for name, rounded in roundings.items():
            if judge is None:
                a_of = {n: policy[n].a_bits for n in table.layers}
                judge = KLJudge(model, table, batches, forward or default_forward, a_of, rounded.weight)
            else:
                judge.use_weights(rounded.weight)
            kls[name] = judge.evaluate(widths)[0]
    finally:
        if judge is not None:
            judge.restore()
        model.train(was_training)
    return kls


def _checked_starts(table, spec, ilp_assignment, starts) -> dict[str, dict[str, int]]:
    """The caller's refinement starts (widths or policies) as {name: {layer: weight bits}}, each verified
    like the ILP's."""
    checked = {}
    for name, widths in (starts or {}).items():
        if name == "ilp" or name.startswith(("uniform-", "refined")):
            raise ValueError(f"refine starts: {name!r} is a name the refinement uses itself; choose another")
        widths = {n: int(getattr(w, "w_bits", w)) for n, w in dict(widths).items()}
        missing, extra = [n for n in spec.layers if n not in widths], [n for n in widths if n not in spec.layers]
        if missing or extra:
            raise ValueError(
                f"refine starts[{name!r}] must give every table layer a width: missing {missing[:3]}, "
                f"not in the table {extra[:3]}"
            )
        try:
            verify(table, spec, {n: (widths[n], ilp_assignment[n][1]) for n in spec.layers})
        except AllocationVerificationError as e:
            raise ValueError(f"refine starts[{name!r}] does not meet this allocation's constraints: {e}") from None
        checked[name] = widths
    return checked


def _refine_assignment(
    model: torch.nn.Module,
    table: SensitivityTable,
    spec: AllocationSpec,
    assignment: Mapping[str, Choice],
    batches: list,
    *,
    passes: int,
    candidates: int = 4,
    screen: int | None = None,
    confirmed: int = 1,
    seed: int = 0,
    forward: Callable | None = None,
    gptq=None,
    validation: list | None = None,
    chains: int = 1,
    starts: Mapping[str, Mapping[str, int]] | None = None,
    accelerator=None,
    progress: bool = True,
) -> tuple[dict[str, Choice], RefinementReport]:
    """Improve `assignment` (the ILP's) by whole-model KL; returns the new assignment and a report (see the
    module doc). `starts` are already checked against every constraint; one equal to an earlier start
    is skipped."""
    if candidates < 1:
        raise ValueError(f"refine needs candidates >= 1, got {candidates}")
    if screen is not None and not (isinstance(screen, int) and 1 <= screen <= len(batches)):
        raise ValueError(
            f"refine screen={screen!r}: the number of calibration batches each move is first scored on, "
            f"from 1 to the {len(batches)} batches given (None: no screening)"
        )
    if isinstance(confirmed, bool) or not isinstance(confirmed, int) or not 1 <= confirmed <= candidates:
        raise ValueError(f"refine confirmed={confirmed!r}: moves per round scored on every batch, 1 to candidates")
    if isinstance(chains, bool) or not isinstance(chains, int) or chains < 1:
        raise ValueError(f"refine needs chains >= 1, got {chains!r}")
    if not batches:
        raise ValueError("the refinement needs calibration batches; pass some, or leave the refinement out")
    missing = [n for n in table.layers if n not in dict(model.named_modules())]
    if missing:
        raise ValueError(
            f"the table's layers {missing[:3]} are not in the model; refine with the model the table was searched on"
        )
    started = time.perf_counter()
    forward = forward or default_forward
    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    a_of = {n: c[1] for n, c in assignment.items()}
    units = MoveUnits(spec, assignment)
    budget = BudgetRows(table, spec)
    was_training = model.training
    model.eval()
    if gptq is not None and not gptq.has_weights():
        raise ValueError("the refinement needs GPTQ's rounded weights: compute the candidates with keep_weights=True")
    rounded = gptq.weight if gptq is not None else None
    evaluator = KLJudge(model, table, batches, forward, a_of, rounded)
    bar = tqdm(total=passes * chains, desc="refine: whole-model passes", disable=not (progress and rank == 0))
    used, screened = 0, 0

    def widths(a: Mapping[str, Choice]) -> dict[str, int]:
        return {n: c[0] for n, c in a.items()}

    try:
        ilp = widths(assignment)
        kl_ilp, out = evaluator.evaluate(ilp)
        used += 1
        bar.update(1)
        current, kl_current, start = ilp, kl_ilp, "ilp"
        evaluator.adopt(current, out)
        evaluator.check_replay(kl_current)
        uniform = widest_uniform(units, ilp, budget, a_of)
        compared = {"ilp": ilp}  # every start evaluated, in order: the held-out check's candidates
        kl_starts = {"ilp": kl_ilp}
        others = ({} if uniform is None else {f"uniform-{uniform[0]}": uniform[1]}) | dict(starts or {})
        for name, config in others.items():
            if config in compared.values() or used >= passes:
                continue
            kl, out = evaluator.evaluate(config)
            used += 1
            bar.update(1)
            compared[name], kl_starts[name] = config, kl
            if kl < kl_current:
                current, kl_current, start = config, kl, name
                evaluator.adopt(current, out)
        kl_uniform = None if uniform is None else kl_starts.get(f"uniform-{uniform[0]}")
        start_config, kl_start = current, kl_current
        start_cache = {b: list(outs) for b, outs in evaluator.cache.items()}
        per_chain = passes - used  # each chain gets what one refinement from this start would
        bar.total = used + per_chain * chains
        bar.refresh()
        ends = {}  # chain name -> (configuration, judge KL, accepted moves)
        for chain in range(chains):
            if chain:  # back to the start: its weights and its recorded block outputs
                evaluator.adopt(start_config, start_cache)
            rng = random.Random(seed + chain)
            current, kl_current = start_config, kl_start
            seen = {tuple(sorted(current.items()))}
            accepted, chain_used = 0, 0
            while chain_used < per_chain:
                drawn = candidates if screen else min(candidates, per_chain - chain_used)
                round_moves = []
                for _ in range(drawn):
                    move = propose(rng, units, table, budget, current, a_of, seen)
                    if move is None:
                        break
                    seen.add(tuple(sorted(move.items())))
                    round_moves.append(move)
                if not round_moves:
                    break
                finalists = list(range(len(round_moves)))
                if screen:
                    first_scores, _ = _judge_split(evaluator, round_moves, finalists, screen, rank, world)
                    screened += len(finalists)
                    finalists = sorted(finalists, key=lambda i: (first_scores[i], i))
                    finalists = finalists[: min(confirmed, per_chain - chain_used)]
                kls, outs = _judge_split(evaluator, round_moves, finalists, None, rank, world)
                chain_used += len(finalists)
                bar.update(len(finalists))
                best = min(kls, key=lambda i: (kls[i], i))
                if kls[best] < kl_current:
                    if best not in outs:  # evaluated on another process: record its block outputs here
                        _, outs[best] = evaluator.evaluate(round_moves[best])
                    current, kl_current = round_moves[best], kls[best]
                    evaluator.adopt(current, outs[best])
                    accepted += 1
                    bar.set_postfix(kl=f"{kl_current:.4g}", accepted=accepted, chain=chain)
            used += chain_used
            ends["refined" if chains == 1 else f"refined-{chain}"] = (current, kl_current, accepted)
        bar.total = bar.n  # a chain that ran out of moves stops early: the bar ends at the work done
        bar.refresh()
        evaluator.restore()  # float weights back: the held-out judge starts from the float model
        moved = {name: end for name, end in ends.items() if end[2]}
        # the chain that ended lowest on the judge; the start itself when no chain moved
        kept = min(ends, key=lambda name: ends[name][1]) if moved else start
        kl_validation = None
        if validation and moved:
            kept, kl_validation = _held_out_choice(
                model,
                table,
                validation,
                forward,
                a_of,
                rounded,
                {**{n: end[0] for n, end in moved.items()}, **compared},
            )
        if kept in ends:
            current, kl_current, accepted = ends[kept]
        else:
            current, kl_current, accepted = compared[kept], kl_starts[kept], 0
    finally:
        bar.close()
        replay = evaluator.replay
        evaluator.restore()
        model.train(was_training)
    report = RefinementReport(
        passes=used,
        accepted=accepted,
        start=start,
        kl_ilp=kl_ilp,
        kl_uniform=kl_uniform,
        kl_final=kl_current,
        calibration_batches=len(batches),
        prefix_replay=replay,
        wall_s=round(time.perf_counter() - started, 3),
        seed=seed,
        rounding="rtn" if gptq is None else "gptq",
        judge_inputs=None if gptq is None else gptq.meta.get("inputs"),
        kept=kept,
        kl_validation=kl_validation,
        validation_batches=len(validation or ()),
        chains=chains,
        screened=screened,
        kl_starts=kl_starts,
    )
    return {n: (current[n], a_of[n]) for n in assignment}, report


def _judge_split(evaluator: KLJudge, moves: list, indices: list[int], upto: int | None, rank: int, world: int):
    """({index: KL} of `moves[i]` for every i in `indices`, {index: block outputs} of those this process
    evaluated): the k-th index listed goes to process k % world; every process gets every KL."""
    kls, outs = {}, {}
    for k, i in enumerate(indices):
        if k % world == rank:
            kls[i], outs[i] = evaluator.evaluate(moves[i], upto)
    if world > 1:
        from accelerate.utils import gather_object  # optional: only with an accelerator

        kls = {i: v for part in gather_object([kls]) for i, v in part.items()}
    return kls, outs


def _held_out_choice(model, table, validation, forward, a_of, rounded, configs: Mapping[str, Mapping[str, int]]):
    """(name of the configuration with the lowest KL on `validation`, every KL); the first listed wins ties.
    Every process computes the same (a few passes: not worth splitting)."""
    judge = KLJudge(model, table, validation, forward, a_of, rounded)
    try:
        kls = {name: judge.evaluate(config)[0] for name, config in configs.items()}
    finally:
        judge.restore()
    return min(kls, key=lambda name: kls[name]), kls
