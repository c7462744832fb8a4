"""Global refinement: a budget-preserving search over whole configurations, judged on the whole model.

Summing single-layer costs misses how layers' errors compound: on SmolLM2 an ILP over the TRUE
single-layer loss changes loses to uniform 3-bit (benchmarks/RESULTS.md). So after the ILP,
`refine` tries moves that raise some layers and lower others within every budget (pins, bounds and
ties kept), runs each candidate configuration as a complete fake-quantized model over the
calibration batches, and keeps a move only when the KL divergence of the model's outputs from the
float model's goes down (EvoPress and CASA judge whole configurations the same way).

- Starts: the ILP's assignment, where one fits the budget the widest uniform assignment, and any
  other configurations the caller gives (`starts`: e.g. the ILP's solution on costs measured another
  way); the one with the lowest KL is refined, and all of them stand in the held-out check.
- Moves, guided by the table's costs: raise one unit (a layer, or a tie group) one width and lower
  the units with the smallest predicted cost per freed resource until every budget holds again; or
  lower one unit and spend what it frees on the units with the best predicted gain per resource.
  Choices are drawn at random among the best few (seeded), so rejected moves are not retried.
- Rounds: `candidates` distinct moves are drawn from the current configuration, evaluated (split
  over `accelerate` processes: the result does not depend on the number of processes), and the
  best is accepted if it lowers the KL. `passes` bounds the evaluations, the starts included.
- Chains: the search is random, and on SmolLM2 its outcome varies with the seed by more than the
  gains it is after (3.0 bits: dev perplexity 108 to 126 over three seeds). `chains` independent
  searches run from the same start, each as long as one; the held-out check below picks among them.
- Cost: blocks (see `sensitivity.probe.find_blocks`) before the first changed layer replay the
  current configuration's recorded outputs instead of running; the replay is checked bit-exact
  once, and switched off (full passes) otherwise.
- Held-out check: moves that win on a few calibration windows can be noise, or overfit them (on
  SmolLM2 at 2.5 bits the refined allocation judged on 512 tokens was 20% worse on dev text than the
  ILP's). Given `validation` batches (other calibration data, never the judge's), the chains' ends
  and the starts are scored there once more and the lowest KL is kept; without them, the chain
  that ended lowest on the judge's batches.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..policy import Budget
from ..quant.modules import fake_quantize_layer
from ..sensitivity.probe import Replay, _detach_tree, find_blocks, replaced_modules
from ..sensitivity.table import SensitivityTable
from ..sensitivity.task import output_tensor
from . import costs
from .spec import AllocationSpec, Choice, choices, resolve_spec

logger = logging.getLogger(__name__)
TOP_CHOICES = 4  # a move picks at random among this many best-predicted options
BUDGET_REL_TOL = 1e-9


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
    kl_validation: dict | None = None  # KL on the validation batches of each configuration compared
    validation_batches: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


class _Budget:
    """Incremental budget rows in the linear forms of `costs.layer_cost` / `costs.row_capacity`."""

    def __init__(self, table: SensitivityTable, spec: AllocationSpec):
        self.table = table
        self.kinds = [k for k in costs.BUDGET_KINDS if getattr(spec.budget, k) is not None]
        self.capacity = {k: costs.row_capacity(table, k, getattr(spec.budget, k)) for k in self.kinds}

    def usage(self, assignment: Mapping[str, Choice]) -> dict[str, float]:
        return {k: sum(costs.layer_cost(self.table, k, n, w, a) for n, (w, a) in assignment.items()) for k in self.kinds}

    def delta(self, names, old: int, new: int, a_of) -> dict[str, float]:
        """Change of every row when layers `names` go from `old` to `new` weight bits."""
        return {k: sum(costs.layer_cost(self.table, k, n, new, a_of[n]) - costs.layer_cost(self.table, k, n, old, a_of[n])
                       for n in names) for k in self.kinds}

    def fits(self, usage: Mapping[str, float]) -> bool:
        return all(usage[k] <= self.capacity[k] + BUDGET_REL_TOL * max(abs(self.capacity[k]), 1.0) for k in self.kinds)

    def weight(self, delta: Mapping[str, float]) -> float:
        """One scalar resource for ranking moves: the change relative to each budget, summed."""
        return sum(abs(delta[k]) / max(abs(self.capacity[k]), 1e-300) for k in self.kinds) or 1e-300


class _Units:
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


class _Evaluator:
    """Runs the model with every table layer fake-quantized as an assignment says; KL to the float model."""

    def __init__(self, model, table, batches, forward: Callable, a_bits: Mapping[str, int | None],
                 quantized_weight: Callable[[str, int], torch.Tensor] | None = None):
        self.model, self.table, self.batches, self.forward = model, table, batches, forward
        self.quantized_weight = quantized_weight or self._round_to_nearest
        self.layers = {n: model.get_submodule(n) for n in table.layers}
        self.float_weights = {n: m.weight.data.clone() for n, m in self.layers.items()}
        self.current: dict[str, int] = {}
        self.blocks = list(find_blocks(model))
        self.block_of = {n: next((i for i, b in enumerate(self.blocks) if n.startswith(b + ".") or n == b), 0)
                         for n in table.layers}
        with torch.no_grad():
            self.reference = [self._log_probs(output_tensor(forward(model, b))) for b in batches]
        self.masks = [b.get("attention_mask") if isinstance(b, Mapping) else None for b in batches]
        self.cache: dict[str, list] = {}
        self.replay = bool(self.blocks)
        self.hooks = self._quantize_activations({n: a for n, a in a_bits.items() if a is not None})

    def _quantize_activations(self, a_bits: Mapping[str, int]) -> list:
        """Inputs of layers with a_bits fake-quantized per tensor, with the float model's ranges (as packing does)."""
        if not a_bits:
            return []
        from ..quant.apply import calibrate_activation_ranges
        from ..quant.quantizer import activation_qparams, fake_quantize_activation

        policy = {n: {"w_bits": 8, "a_bits": a} for n, a in a_bits.items()}
        ranges = calibrate_activation_ranges(self.model, self.batches, policy, self.forward)
        hooks = []
        for name, bits in a_bits.items():
            scale, zero = activation_qparams(*ranges[name], bits)
            hooks.append(self.layers[name].register_forward_pre_hook(
                lambda m, args, s=scale, z=zero, b=bits: (fake_quantize_activation(args[0], s, z, b), *args[1:])))
        return hooks

    @staticmethod
    def _log_probs(logits: torch.Tensor) -> torch.Tensor:
        return F.log_softmax(logits.detach().float(), dim=-1)

    def _kl(self, i: int, logits: torch.Tensor) -> tuple[float, int]:
        ref = self.reference[i]
        per = (ref.exp() * (ref - self._log_probs(logits))).sum(-1)  # KL(float || quantized) per position
        mask = self.masks[i]
        if mask is not None and mask.shape == per.shape:
            keep = mask.to(per.device).bool()
            return float(per[keep].sum()), int(keep.sum())
        return float(per.sum()), per.numel()

    def _set(self, assignment: Mapping[str, int]) -> list[str]:
        changed = [n for n, b in assignment.items() if self.current.get(n) != b]
        for n in changed:
            self.layers[n].weight.data.copy_(self.quantized_weight(n, assignment[n]))
            self.current[n] = assignment[n]
        return changed

    def _round_to_nearest(self, name: str, bits: int) -> torch.Tensor:
        scheme = self.table.scheme.weight_scheme(self.table.layers[name].get("kind", "linear"), bits)
        return fake_quantize_layer(self.layers[name], self.float_weights[name], scheme, name)

    def _mean_kl(self, replayed: list[str]) -> float:
        """One pass over the calibration batches with `replayed` blocks standing in for themselves."""
        counter = [0]
        replays = {b: Replay(self.cache[b], counter, clone=b == replayed[-1]) for b in replayed}
        total, count = 0.0, 0
        with replaced_modules(self.model, replays):
            for i, batch in enumerate(self.batches):
                counter[0] = i
                part, n = self._kl(i, output_tensor(self.forward(self.model, batch)))
                total, count = total + part, count + n
        return total / max(count, 1)

    @torch.no_grad()
    def evaluate(self, assignment: Mapping[str, int]) -> tuple[float, dict[str, list]]:
        """Mean KL over the calibration positions, and the outputs of the blocks that ran."""
        before = dict(self.current)
        changed = self._set(assignment)
        first = min((self.block_of[n] for n in changed), default=len(self.blocks)) if self.replay and self.cache else 0
        outputs: dict[str, list] = {b: [] for b in self.blocks[first:]}
        hooks = [self.model.get_submodule(b).register_forward_hook(
            lambda m, args, out, b=b: outputs[b].append(_detach_tree(out))) for b in self.blocks[first:]]
        try:
            kl = self._mean_kl(self.blocks[:first])
        finally:
            for h in hooks:
                h.remove()
        self._set(before)  # back to the current configuration; `adopt` moves on
        return kl, outputs

    def adopt(self, assignment: Mapping[str, int], outputs: Mapping[str, list]) -> None:
        self._set(assignment)
        self.cache.update(outputs)

    @torch.no_grad()
    def check_replay(self, kl: float) -> None:
        """Replay every block from the cache once: the KL must come out bit-identical, or replay is off."""
        if not self.replay or any(len(self.cache.get(b, ())) != len(self.batches) for b in self.blocks):
            self.replay = False
        elif self._mean_kl(self.blocks) != kl:
            logger.warning("refinement: replaying block outputs did not reproduce the model exactly; "
                           "every candidate runs the full model")
            self.replay = False

    def restore(self) -> None:
        for h in self.hooks:
            h.remove()
        for n, layer in self.layers.items():
            layer.weight.data.copy_(self.float_weights[n])
        self.current.clear()
        self.cache.clear()


def refine(
    model: torch.nn.Module,
    table: SensitivityTable,
    spec: AllocationSpec,
    assignment: Mapping[str, Choice],
    batches: list,
    *,
    passes: int,
    candidates: int = 4,
    seed: int = 0,
    forward: Callable | None = None,
    gptq=None,
    validation: list | None = None,
    chains: int = 1,
    starts: Mapping[str, Mapping[str, int]] | None = None,
    accelerator=None,
    progress: bool = True,
) -> tuple[dict[str, Choice], RefinementReport]:
    """Improve `assignment` (the ILP's) by whole-model KL; returns the new assignment and a report.

    Candidates are evaluated with round-to-nearest weights, or with GPTQ's when `gptq` (a
    `quant.gptq.GPTQCandidates` holding the rounded weights) says how the model will be packed.
    `validation`: calibration batches the search never judged on; the refined configuration is kept
    only if its KL there is below the starts' (see the module doc). `chains`: independent searches
    from the same start (seeds `seed`, `seed + 1`, ...), each `passes` minus the starts' evaluations
    long; the one kept has the lowest KL on `validation` when given, else on the judge's batches.
    `starts`: more starting configurations, {name: {layer: weight bits}}, already checked against
    every constraint (`allocate` does); one equal to an earlier start is skipped."""
    from ..quant.apply import default_forward

    if passes < 1:
        raise ValueError(f"refine needs passes >= 1, got {passes}")
    if candidates < 1:
        raise ValueError(f"refine needs candidates >= 1, got {candidates}")
    if isinstance(chains, bool) or not isinstance(chains, int) or chains < 1:
        raise ValueError(f"refine needs chains >= 1, got {chains!r}")
    if not batches:
        raise ValueError("the refinement needs calibration batches; pass calibration= or set refine_passes=0")
    missing = [n for n in table.layers if n not in dict(model.named_modules())]
    if missing:
        raise ValueError(f"the table's layers {missing[:3]} are not in the model; refine with the model the table "
                         "was searched on")
    started = time.perf_counter()
    forward = forward or default_forward
    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    a_of = {n: c[1] for n, c in assignment.items()}
    units = _Units(spec, assignment)
    budget = _Budget(table, spec)
    was_training = model.training
    model.eval()
    if gptq is not None and not gptq.has_weights():
        raise ValueError("the refinement needs GPTQ's rounded weights: compute the candidates with keep_weights=True")
    rounded = gptq.weight if gptq is not None else None
    evaluator = _Evaluator(model, table, batches, forward, a_of, rounded)
    bar = tqdm(total=passes * chains, desc="refine: whole-model passes", disable=not (progress and rank == 0))
    used = 0

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
        uniform = _uniform_start(units, spec, ilp, budget, a_of)
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
                round_moves = []
                for _ in range(min(candidates, per_chain - chain_used)):
                    move = _propose(rng, units, table, budget, current, a_of, seen)
                    if move is None:
                        break
                    seen.add(tuple(sorted(move.items())))
                    round_moves.append(move)
                if not round_moves:
                    break
                kls = {}
                outs = {}
                for i, move in enumerate(round_moves):
                    if i % world == rank:
                        kls[i], outs[i] = evaluator.evaluate(move)
                if world > 1:
                    from accelerate.utils import gather_object
                    kls = {i: v for part in gather_object([kls]) for i, v in part.items()}
                chain_used += len(round_moves)
                bar.update(len(round_moves))
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
        kept = min(ends, key=lambda name: ends[name][1])  # the chain that ended lowest on the judge
        kl_validation = None
        if validation and moved:
            kept, kl_validation = _held_out_choice(model, table, validation, forward, a_of, rounded,
                                                   {**{n: end[0] for n, end in moved.items()}, **compared})
        if kept in ends:
            current, kl_current, accepted = ends[kept]
        else:
            current, kl_current, accepted = compared[kept], kl_starts[kept], 0
    finally:
        bar.close()
        replay = evaluator.replay
        evaluator.restore()
        model.train(was_training)
    report = RefinementReport(passes=used, accepted=accepted, start=start, kl_ilp=kl_ilp, kl_uniform=kl_uniform,
                              kl_final=kl_current, calibration_batches=len(batches), prefix_replay=replay,
                              wall_s=round(time.perf_counter() - started, 3), seed=seed,
                              rounding="rtn" if gptq is None else "gptq",
                              judge_inputs=None if gptq is None else gptq.meta.get("inputs"), kept=kept,
                              kl_validation=kl_validation, validation_batches=len(validation or ()), chains=chains,
                              kl_starts=kl_starts)
    return {n: (current[n], a_of[n]) for n in assignment}, report


def _held_out_choice(model, table, validation, forward, a_of, rounded, configs: Mapping[str, Mapping[str, int]]):
    """(name of the configuration with the lowest KL on `validation`, every KL); the first listed wins ties.
    Every process computes the same (a few passes: not worth splitting)."""
    judge = _Evaluator(model, table, validation, forward, a_of, rounded)
    try:
        kls = {name: judge.evaluate(config)[0] for name, config in configs.items()}
    finally:
        judge.restore()
    return min(kls, key=lambda name: kls[name]), kls


def uniform_start(table: SensitivityTable, budget: Budget, *, pin_first_last="auto", first_last_bits=None,
                  pin=None) -> dict[str, int] | None:
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
    found = _uniform_start(_Units(spec, base), spec, {n: c[0] for n, c in base.items()}, _Budget(table, spec), a_of)
    return None if found is None else found[1]


def _uniform_start(units: _Units, spec: AllocationSpec, ilp: Mapping[str, int], budget: _Budget, a_of):
    """The widest width every free unit admits that fits the budget (pinned layers keep their pins)."""
    common = None
    for group, ws in units.widths.items():
        common = set(ws) if common is None else common & set(ws)
    for w in sorted(common or (), reverse=True):
        candidate = dict(ilp)
        for group in units.widths:
            for n in group:
                candidate[n] = w
        if budget.fits(budget.usage({n: (b, a_of[n]) for n, b in candidate.items()})):
            return w, candidate
    return None


def _propose(rng: random.Random, units: _Units, table: SensitivityTable, budget: _Budget,
             current: Mapping[str, int], a_of, seen: set, tries: int = 20) -> dict[str, int] | None:
    """A new budget-feasible configuration one guided move away from `current`, or None."""
    for _ in range(tries):
        move = _raise_first(rng, units, table, budget, current, a_of) if rng.random() < 0.5 else \
            _lower_first(rng, units, table, budget, current, a_of)
        if move is not None and tuple(sorted(move.items())) not in seen:
            return move
    return None


def _step(units: _Units, group, config, direction: int):
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


def _set_unit(budget: _Budget, config: dict, usage: dict, group, width: int, a_of) -> dict:
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
        fitting = [(g, w) for _, g, w in _options(units, table, budget, config, a_of, +1, {group})
                   if budget.fits(_set_unit(budget, dict(config), usage, g, w, a_of))]
        if not fitting:
            return config if raised else None
        g, w = fitting[rng.randrange(min(TOP_CHOICES, len(fitting)))]
        usage = _set_unit(budget, config, usage, g, w, a_of)
        raised = True
