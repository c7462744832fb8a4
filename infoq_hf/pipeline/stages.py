"""The pipeline's stages, each `stage(run, config) -> run`: it reads what it needs from the `Run` and the
whole `InfoQConfig`, and returns the run with what it found (and its time). `quantize.py` lists them.

A stage that does not apply to the run (GPTQ costs when packing rounds to nearest, activation
ranges for a policy without activation bits) returns the run as it is.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import replace

import torch.nn as nn

from .. import allocation
from ..accounting import leftover_bytes, model_size_bytes
from ..config import InfoQConfig
from ..policy import BitPolicy, Budget
from ..quant.apply import (
    calibrate_activation_ranges,
    cast_float_leftovers,
    leftover_dtype,
    policy_layers,
    quantizable_layers,
    set_compute_dtype,
    unpackable_embeddings,
)
from ..quant.gptq import GPTQOptions, gptq_candidates
from ..quant.quantize import quantize_model
from ..quant.scheme import PackingScheme
from ..sensitivity import DATA_FREE_METHODS, InfoQOptions, SensitivityTable, search
from ..sensitivity.rounding_costs import with_gptq_costs
from ..sensitivity.search import probe_widths
from ..sensitivity.task import is_causal_lm
from .data import first_samples, load_calibration_batches, resolve_rounding
from .run import Run

# Moves each round screens with `refine_judge_samples`; the best is judged on every judge sample
# (benchmarks/studies/multi_fidelity.py).
SCREENED_MOVES = 8


def scoring_scheme(run: Run, config: InfoQConfig) -> PackingScheme:
    """The run's packing scheme (before `choose_rounding`, the config's) with round to nearest: the
    search's probes perturb with it, clipping as the packing will."""
    return replace(run.scheme or config.scheme, rounding="rtn")


def searching(config: InfoQConfig) -> bool:
    """The config asks for a search and an allocation (no policy given, no uniform width)."""
    return config.policy is None and config.uniform_bits is None


def refining(config: InfoQConfig) -> bool:
    """The allocation is checked on the whole model (`refine` below): it searches, with calibration data
    (data-free runs: the ILP alone)."""
    return searching(config) and config.calibration is not None


def layer_table(model: nn.Module, bits, *, scheme: PackingScheme, skip_modules, embeddings: bool) -> SensitivityTable:
    """A table of the layers a search would score, with their sizes and random scores: no data, no forward pass."""
    return search(
        model,
        None,
        bits=bits,
        method="random",
        scheme=scheme,
        skip_modules=skip_modules,
        embeddings=embeddings,
        progress=False,
    )


def check_budget_feasible(
    model: nn.Module,
    budget,
    *,
    bits,
    scheme: PackingScheme,
    skip_modules=(),
    solver="auto",
    pin_first_last="auto",
    embeddings: bool = False,
    float_dtype: str | None = None,
) -> None:
    """Raise `InfeasibleBudgetError` before any probing when no choice of the candidate bits meets the
    budget's size, average-bits or compression terms: they depend on layer sizes only, so the ILP on a
    table with the model's layer sizes (and random scores) decides it in milliseconds. BitOps need the
    MACs of a forward pass and are left to the allocation after the search. `float_dtype`: as
    `InfoQConfig.float_dtype`, what the leftovers will be stored in."""
    budget = budget if isinstance(budget, Budget) else Budget.from_dict(budget)
    sized = {k: v for k, v in budget.to_dict().items() if k != "bitops"}
    if not sized:
        return
    with warnings.catch_warnings():  # the real search repeats any warning (tied weights, ...)
        warnings.simplefilter("ignore")
        skeleton = layer_table(model, bits, scheme=scheme, skip_modules=skip_modules, embeddings=embeddings)
    skeleton = stored_leftovers(skeleton, model, float_dtype)
    allocation.allocate(skeleton, Budget(**sized), solver=solver, pin_first_last=pin_first_last)


def stored_leftovers(table: SensitivityTable, model: nn.Module, float_dtype: str | None) -> SensitivityTable:
    """`table` with what stays float counted as packing will store it (cast as `InfoQConfig.float_dtype`
    says), so a size budget is spent on the bytes the checkpoint really holds."""
    dtype = leftover_dtype(float_dtype, model)
    if dtype is None:
        return table
    meta = {**table.meta, "float_bytes": leftover_bytes(model, table.layers, dtype)}
    return SensitivityTable(table.method, table.bits, table.layers, meta)


def count_leftovers(run: Run, config: InfoQConfig) -> Run:
    """The table's float leftovers in the dtype they will be stored in (`stored_leftovers`)."""
    return replace(run, table=stored_leftovers(run.table, run.model, config.float_dtype))


def check_embeddings(run: Run, config: InfoQConfig) -> Run:
    """`quantize_embeddings` packs lookups (times a constant at most, `quant.modules.lookup_scale`): a
    model whose embeddings all do more is refused, such embeddings beside packable ones are named in a
    warning."""
    others = unpackable_embeddings(run.model, run.skip_modules) if config.quantize_embeddings else {}
    if not others:
        return run
    listed = ", ".join(f"{name} ({kind})" for name, kind in others.items())
    layers = quantizable_layers(run.model, run.skip_modules, embeddings=True).values()
    if not any(isinstance(m, nn.Embedding) for m in layers):
        raise ValueError(
            f"quantize_embeddings=True, but this model's embeddings are not lookups that infoq_hf can pack: "
            f"{listed} (their forward does more than a lookup times a constant). Leave quantize_embeddings "
            "False: they stay float"
        )
    warnings.warn(
        f"quantize_embeddings=True packs lookups (times a constant at most): {listed} stay float",
        stacklevel=2,
    )
    return run


def check_budget(run: Run, config: InfoQConfig) -> Run:
    """An impossible budget fails here, before any data is loaded."""
    check_budget_feasible(
        run.model,
        config.budget,
        bits=config.bits,
        scheme=scoring_scheme(run, config),
        skip_modules=run.skip_modules,
        solver=config.solver,
        pin_first_last=config.pin_first_last,
        embeddings=config.quantize_embeddings,
        float_dtype=config.float_dtype,
    )
    return run


def calibration_needs(run: Run, config: InfoQConfig) -> list[str]:
    """Why the run needs calibration data, in the order the stages ask for it (empty: it does not)."""
    given = config.calibration is not None
    policy = config.policy or {}
    needs = [
        ("rounding='auto'", config.rounding == "auto" and given and is_causal_lm(run.model)),
        (
            f"method {config.method!r}",
            searching(config) and run.table is None and config.method not in DATA_FREE_METHODS,
        ),
        ("the refinement", refining(config)),
        ("a policy with activation bits (a_bits)", any(lb.a_bits is not None for lb in policy.values())),
        ("rounding='gptq'", config.rounding == "gptq"),
    ]
    return [why for why, needed in needs if needed]


def calibrate(run: Run, config: InfoQConfig) -> Run:
    """Load the calibration data when a later stage needs it; the first `search_samples` samples go to the
    search and the refinement, the next as many to the refinement's held-out check, GPTQ rounds with all.
    With `refine_judge_samples` beyond them, the refinement's moves are judged on that many first samples
    (the search's screen them) and the held-out check takes the next as many, or what is left."""
    needs = calibration_needs(run, config)
    if not needs:
        return run
    if config.calibration is None:
        raise ValueError(
            f"{needs[0]} needs calibration data: set InfoQConfig(calibration=CalibrationSpec(...) or a list of batches)"
        )
    started = time.perf_counter()
    batches = load_calibration_batches(
        config.calibration,
        run.model,
        tokenizer=run.tokenizer,
        image_transform=run.image_transform,
        **config.calibration_options,
    )
    loaded = run.timed("calibration", started)
    if not batches:
        raise ValueError(f"{needs[0]} needs calibration data, and the calibration set is empty")
    samples = config.search_samples
    search_batches = batches if samples is None else first_samples(batches, samples)
    judge_batches, judged = None, samples  # the judge is the search's unless refine_judge_samples is larger
    if config.refine_passes and samples is not None and (config.refine_judge_samples or 0) > samples:
        judged = config.refine_judge_samples
        judge_batches = search_batches + first_samples(batches[len(search_batches) :], judged - samples)
    after = len(judge_batches or search_batches)
    held_out = None if judged is None else (first_samples(batches[after:], judged) or None)
    return replace(
        loaded, batches=batches, search_batches=search_batches, judge_batches=judge_batches, held_out=held_out
    )


def choose_rounding(run: Run, config: InfoQConfig) -> Run:
    """The packing scheme, its rounding and clipping made concrete ("auto": see `data.resolve_rounding`
    and `InfoQConfig.clip_search`)."""
    rounding = resolve_rounding(config, run.model, run.batches)
    scheme = replace(config.scheme, rounding=rounding, clip_search=config.clip_search_for(rounding))
    return replace(run, scheme=scheme)


def information_estimate(model: nn.Module, config: InfoQConfig, skip_modules=()) -> dict:
    """InfoQ's `change_estimate`, when the config leaves it open: to first order (one backward pass per
    observer term), unless the scores are "calibrated" and the budget's uniform start lies below the
    probe width. There the allocation extrapolates each layer's cost to perturbations wider than the
    one measured, and the probes' higher-order change counts: on dev data (benchmarks/studies/
    first_order.py) the two calibrated estimates allocate alike at 3.0 and 3.5 bits on SmolLM2 and 3.0
    on a ResNet-8, and the first order is worse at 2.5 bits on both. The per-width scores (the default)
    measure every width and need no extrapolation."""
    if config.method != "infoq" or "change_estimate" in config.method_options:
        return {}
    options = InfoQOptions.from_dict(config.method_options)
    if options.scores != "calibrated":
        return {}
    sizes = layer_table(
        model, config.bits, scheme=config.scheme, skip_modules=skip_modules, embeddings=config.quantize_embeddings
    )
    start = allocation.uniform_start(sizes, config.budget, pin_first_last=config.pin_first_last)
    probe_width = min(probe_widths(options, sorted(config.bits)))
    below = not start or min(start.values()) < probe_width
    return {"change_estimate": "probe" if below else "first_order"}


def search_options(run: Run, config: InfoQConfig) -> dict:
    """The options `score` passes to the search: the config's, the information estimate filled in."""
    return {**information_estimate(run.model, config, run.skip_modules), **config.method_options}


def measures_gptq(run: Run, config: InfoQConfig) -> bool:
    """The search perturbs each layer by GPTQ's candidates: InfoQ's first-order per-width scores of a
    run that packs with GPTQ."""
    if config.method != "infoq" or run.scheme.rounding != "gptq" or run.table is not None:
        return False
    options = InfoQOptions.from_dict(search_options(run, config))
    return options.scores == "per_width" and options.change_estimate == "first_order"


def score(run: Run, config: InfoQConfig) -> Run:
    """The sensitivity search (`search`), on the search's share of the calibration data; InfoQ's per-width
    first-order scores perturb each layer by GPTQ's candidates when packing rounds with GPTQ."""
    data = None if config.method in DATA_FREE_METHODS else run.search_batches
    options = search_options(run, config)
    if measures_gptq(run, config):
        options["candidates"] = run.candidates
    started = time.perf_counter()
    table = search(
        run.model,
        data,
        bits=config.bits,
        method=config.method,
        seed=config.seed,
        scheme=scoring_scheme(run, config),
        skip_modules=run.skip_modules,
        embeddings=config.quantize_embeddings,
        accelerator=run.accelerator,
        progress=run.progress,
        **options,
    )
    return run.timed("search", started, table=table)


def round_candidates(run: Run, config: InfoQConfig) -> Run:
    """When packing rounds with GPTQ, the allocation knows it: one pass rounds every layer at every
    candidate width (`gptq_candidates`) on the inputs the budget's widest uniform configuration gives
    (for that configuration, sequential GPTQ's own codes). The search may measure with them
    (`measures_gptq`), the costs are GPTQ's (`gptq_costs`), the whole-model check (and any refinement
    moves) judges these rounded weights, and the packing stores them."""
    if run.scheme.rounding != "gptq":
        if run.candidates is not None:
            raise ValueError(
                f"GPTQ candidates were passed but this run packs with {run.scheme.rounding!r} rounding; "
                "set InfoQConfig(rounding='gptq') or pass no candidates"
            )
        return run
    started = time.perf_counter()
    sizes = run.table
    if sizes is None:  # the layers and sizes the search will score, to find the uniform start
        sizes = layer_table(
            run.model,
            config.bits,
            scheme=scoring_scheme(run, config),
            skip_modules=run.skip_modules,
            embeddings=config.quantize_embeddings,
        )
    sizes = stored_leftovers(sizes, run.model, config.float_dtype)
    weights = refining(config) or measures_gptq(run, config)
    widths = {n: sizes.bits for n in sizes.layers}
    prefix = allocation.uniform_start(sizes, config.budget, pin_first_last=config.pin_first_last)
    candidates = run.candidates
    if candidates is not None:  # the caller's, from an earlier run on this model and data
        check_candidates(candidates, widths, prefix, run.batches, config, run.scheme, weights=weights)
    else:
        candidates = gptq_candidates(
            run.model,
            widths,
            run.batches,
            scheme=run.scheme,
            options=config.gptq_options,
            keep_weights=weights,
            prefix_bits=prefix,
            accelerator=run.accelerator,
            progress=run.progress,
        )
    return run.timed("gptq candidates", started, candidates=candidates)


def gptq_costs(run: Run, config: InfoQConfig) -> Run:
    """The table's costs for GPTQ packing: rescaled by GPTQ's output error relative to round-to-nearest's
    (`sensitivity.rounding_costs`), or as measured when the search perturbed with GPTQ's weights. The
    candidates' weights are dropped unless the whole-model check judges them."""
    if run.candidates is None:
        return run
    return replace(
        run,
        table=with_gptq_costs(run.table, run.candidates),
        candidates=run.candidates if refining(config) else None,
    )


def check_candidates(candidates, widths, prefix, batches, config: InfoQConfig, scheme, *, weights: bool) -> None:
    """Raise unless `candidates` (a `GPTQCandidates` the caller passed) are what this run would compute:
    every layer and width, rounded on the inputs of the same uniform start, with the same scheme, options
    and number of calibration batches (the batches themselves cannot be checked: pass the same data)."""
    meta, problems = candidates.meta, []
    missing = [n for n, bs in widths.items() if set(bs) - set(candidates.error_ratio.get(n, {}))]
    if missing:
        problems.append(
            f"no rounding of {missing[:3]} at every width {sorted({b for bs in widths.values() for b in bs})}"
        )
    if (meta.get("prefix_bits") or None) != (prefix or None):
        problems.append("rounded on other inputs than this budget's uniform start (candidates serve one start)")
    if meta.get("scheme") != scheme.codes_settings():
        problems.append(f"rounded with {meta.get('scheme')}, this run packs with {scheme.codes_settings()}")
    if meta.get("options") != GPTQOptions.from_dict(config.gptq_options).to_dict():
        problems.append(f"GPTQ options {meta.get('options')} differ from the config's")
    if meta.get("calibration_batches") != len(batches):
        problems.append(f"{meta.get('calibration_batches')} calibration batches, this run has {len(batches)}")
    if weights and not candidates.has_weights():
        problems.append("no rounded weights (the refinement judges them: compute with keep_weights=True)")
    if problems:
        raise ValueError("the GPTQ candidates passed do not fit this run: " + "; ".join(problems))


def allocate(run: Run, config: InfoQConfig) -> Run:
    """The ILP: the widths of least total cost under the budget (`allocation.allocate`)."""
    started = time.perf_counter()
    policy = allocation.allocate(
        run.table, config.budget, solver=config.solver, alpha=config.alpha, pin_first_last=config.pin_first_last
    )
    return run.timed("allocation", started, policy=policy)


def refine(run: Run, config: InfoQConfig) -> Run:
    """The ILP's policy checked on the whole model: kept, or replaced by the widest uniform configuration
    under the budget, or by the ILP's solution with a quantized embedding pinned wider
    (`allocation.embedding_starts`), when that runs closer to the float model on the calibration samples
    (`allocation.compare_with_uniform`); with `refine_passes` > 0, improved by random moves as well
    (`allocation.refine`), screened first when `refine_judge_samples` judges on more samples."""
    started = time.perf_counter()
    starts = allocation.embedding_starts(run.policy, solver=config.solver)
    if config.refine_passes:
        # multi-fidelity: each round's moves screened on the search's batches, the best judged on the judge's
        screening = {}
        if run.judge_batches is not None:
            screening = {"screen": len(run.search_batches), "candidates": SCREENED_MOVES}
        policy = allocation.refine(
            run.policy,
            run.model,
            run.judge_batches or run.search_batches,
            passes=config.refine_passes,
            chains=config.refine_chains,
            validation=run.held_out,
            gptq=run.candidates,
            seed=config.seed,
            accelerator=run.accelerator,
            starts=starts,
            progress=run.progress,
            **screening,
        )
    else:  # the check: every start judged once, on the search's and the held-out samples together
        policy = allocation.compare_with_uniform(
            run.policy,
            run.model,
            run.search_batches + (run.held_out or []),
            gptq=run.candidates,
            starts=starts,
            accelerator=run.accelerator,
            progress=run.progress,
        )
    label = "refinement" if config.refine_passes else "whole-model check"
    return run.timed(label, started, policy=policy)


def reround(run: Run, config: InfoQConfig) -> Run:
    """GPTQ's candidates were rounded on the inputs of the budget's uniform start (`gptq_costs`); a kept
    allocation that differs from it sees other inputs once packed. Round it again on its own inputs and
    pack whichever rounding runs closer to the float model on the check's samples (`second_rounding`)."""
    if not config.reround or run.candidates is None:
        return run
    started = time.perf_counter()
    policy = run.policy
    candidates, kls, kept = second_rounding(
        run.model,
        policy,
        run.candidates,
        run.batches,
        run.search_batches + (run.held_out or []),
        table=policy.report.table,
        scheme=run.scheme,
        options=config.gptq_options,
        accelerator=run.accelerator,
        progress=run.progress,
    )
    if kls is None:
        return run
    refinement = replace(policy.report.refinement, kl_roundings=kls, rounding_kept=kept)
    policy = BitPolicy(dict(policy), report=replace(policy.report, refinement=refinement), scheme=policy.scheme)
    return run.timed("second rounding", started, policy=policy, candidates=candidates)


def second_rounding(
    model: nn.Module,
    policy: BitPolicy,
    candidates,
    batches: list,
    judged: list,
    *,
    table: SensitivityTable,
    scheme: PackingScheme,
    options=None,
    accelerator=None,
    progress: bool = True,
) -> tuple:
    """(candidates to pack `policy` with, the KL of each rounding, the rounding kept). GPTQ's `candidates`
    (rounded on the inputs of a uniform start) or, when `policy` differs from that start, its layers
    rounded by sequential GPTQ on the inputs `policy` itself gives (`gptq_candidates` with `policy` as
    the prefix, over `batches`): whichever runs closer to the float model on `judged` batches
    (`allocation.compare_roundings`); a tie keeps the candidates. The KLs and the name kept are None
    when `policy` is the start itself (the candidates are then its sequential codes) or has activation
    bits."""
    layers = list(table.layers)
    widths = {n: policy[n].w_bits for n in layers}
    start = candidates.meta.get("prefix_bits")
    if not start or widths == start or any(policy[n].a_bits is not None for n in layers):
        return candidates, None, None
    own = gptq_candidates(
        model,
        {n: [b] for n, b in widths.items()},
        batches,
        scheme=scheme,
        options=options,
        keep_weights=True,
        prefix_bits=widths,
        accelerator=accelerator,
        progress=progress,
    )
    roundings = {"start inputs": candidates, "own inputs": own}
    kls = allocation.compare_roundings(policy, model, judged, roundings, table=table)
    kept = min(kls, key=lambda name: (kls[name], name != "start inputs"))
    return roundings[kept], kls, kept


def given_policy(run: Run, config: InfoQConfig) -> Run:
    """The config's policy, applied as it is."""
    return replace(run, policy=config.policy)


def uniform(run: Run, config: InfoQConfig) -> Run:
    """Every layer a search would score at `config.uniform_bits`."""
    layers = layer_table(
        run.model,
        [config.uniform_bits],
        scheme=scoring_scheme(run, config),
        skip_modules=run.skip_modules,
        embeddings=config.quantize_embeddings,
    ).layers
    return replace(run, policy=BitPolicy({name: config.uniform_bits for name in layers}))


def activation_ranges(run: Run, config: InfoQConfig) -> Run:
    """The input ranges of the layers the policy gives activation bits."""
    if not any(lb.a_bits is not None for lb in run.policy.values()):
        return run
    if run.batches is None:
        raise ValueError(
            "a policy with activation bits (a_bits) needs calibration data: set "
            "InfoQConfig(calibration=CalibrationSpec(...) or a list of batches)"
        )
    started = time.perf_counter()
    return run.timed(
        "activation ranges", started, act_ranges=calibrate_activation_ranges(run.model, run.batches, run.policy)
    )


def pack(run: Run, config: InfoQConfig) -> Run:
    """Replace the policy's layers by packed ones (`quantize_model`): with GPTQ's candidates when the
    allocation judged them (the weights it chose, no second pass), else rounded now (GPTQ with every
    calibration batch, or to nearest); then cast what stays float as `config.float_dtype` says
    (`quant.apply.leftover_dtype`)."""
    model, gptq = run.model, run.scheme.rounding == "gptq"
    dtype = leftover_dtype(config.float_dtype, model)  # decided on the float model
    float_bytes = model_size_bytes(model)
    params = {n: m.weight.numel() for n, m in policy_layers(model, run.policy).items()}
    started = time.perf_counter()
    quantize_model(
        model,
        run.policy,
        scheme=run.scheme,
        skip_modules=run.skip_modules,
        act_ranges=run.act_ranges,
        calibration=run.batches if gptq and run.candidates is None else None,
        gptq_options=config.gptq_options,
        progress=run.progress,
        candidates=run.candidates,
    )
    if dtype is not None:  # the leftovers are stored (and run) in it
        cast_float_leftovers(model, dtype)
    set_compute_dtype(model, config.compute_dtype)
    label = "packing (gptq candidates)" if run.candidates is not None else "packing (gptq)" if gptq else "packing"
    return run.timed(label, started, float_bytes=float_bytes, params=params, float_dtype=dtype, candidates=None)
