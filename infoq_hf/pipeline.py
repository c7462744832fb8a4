"""One call from a float model to a packed one: calibrate -> search -> allocate -> pack.

The only place these stages run in sequence: the transformers quantizer (quantize on load), the
`infoq` CLI and the recipes call it. Each stage is timed; the `QuantizationResult` carries the
table, the policy and a summary that `format_summary` renders on one screen.
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn

from .accounting import compression_ratio, expected_size_bytes, mean_weight_bits, model_size_bytes
from .allocation import allocate, uniform_start
from .calibration import CalibrationSet
from .checkpoint import cast_float_leftovers
from .config import InfoQConfig
from .policy import BitPolicy, Budget
from .quant.apply import (
    batch_to_model_device,
    calibrate_activation_ranges,
    packed_layers,
    policy_layers,
    quantize_model,
)
from .quant.gptq import gptq_candidates
from .quant.quantizer import effective_group_size
from .quant.scheme import PackingScheme
from .sensitivity import DATA_FREE_METHODS, SensitivityTable, search
from .sensitivity.rounding_costs import with_gptq_costs
from .sensitivity.task import is_causal_lm

logger = logging.getLogger("infoq_hf")


@dataclass(frozen=True)
class QuantizationResult:
    """What `quantize_with_infoq` did: the packed model (the one passed in, changed in place), the
    policy it was packed with (`policy.report` says how the allocation found it; None for a given
    policy), the sensitivity table (None when no search ran) and the summary `format_summary` prints."""

    model: nn.Module
    policy: BitPolicy
    table: SensitivityTable | None
    summary: dict = field(repr=False)


def load_calibration_batches(calibration, model: nn.Module, *, tokenizer=None, image_transform=None,
                             **options) -> list:
    """The batches `calibration` (anything `calibration.load_calibration` takes) names, in the form the
    model takes: dicts of model inputs, or `(images, labels)` tuples for a timm model. Images without
    labels get the float model's own top-1 class (the sensitivity methods score how quantization
    changes the task, and folder names need not match the model's class indices). The tensors are
    placed on the model's (first) device. Ready batches come back as they are."""
    from .calibration import load_calibration
    from .integrations.timm import is_timm_model

    batches = load_calibration(calibration, tokenizer=tokenizer, image_transform=image_transform, model=model,
                               format="tuple" if is_timm_model(model) else "dict", **options)
    if not isinstance(batches, CalibrationSet):
        return batches
    labelled = []
    with torch.no_grad():
        for batch in batches:
            batch = batch_to_model_device(batch, model)
            if isinstance(batch, tuple) and batch[1] is None:
                batch = (batch[0], model(batch[0]).argmax(-1))
            elif isinstance(batch, dict) and "pixel_values" in batch and "labels" not in batch:
                batch = {**batch, "labels": model(**batch).logits.argmax(-1)}
            labelled.append(batch)
    return CalibrationSet(labelled, batches.spec)


GPTQ_MIN_TOKENS = 4096  # "auto" rounds with GPTQ from this many calibration tokens on (see resolve_rounding)


def resolve_rounding(config: InfoQConfig, model: nn.Module, batches: list | None = None) -> str:
    """`config.rounding`, with "auto" made concrete: GPTQ for a causal LM whose calibration `batches`
    hold at least GPTQ_MIN_TOKENS tokens, round to nearest otherwise. Chosen on SmolLM2-135M's dev
    windows (`benchmarks/gptq.py`, uniform 4 / 3 bits, RTN 72.8 / 165.4): GPTQ from 32x128 tokens
    66.7 / 117.9, but from 4x128 tokens 68.3 / 222.3 (its Hessians are then rank-deficient and it
    overfits them), so a calibration as small as the demo's keeps round-to-nearest."""
    if config.rounding != "auto":
        return config.rounding
    if batches is None or not is_causal_lm(model):
        return "rtn"
    tokens = sum(int(b["input_ids"].numel()) for b in batches if isinstance(b, dict) and "input_ids" in b)
    return "gptq" if tokens >= GPTQ_MIN_TOKENS else "rtn"


def check_budget_feasible(model: nn.Module, budget, *, bits, scheme: PackingScheme, skip_modules=(), solver="auto",
                          pin_first_last="auto", embeddings: bool = False) -> None:
    """Raise `InfeasibleBudgetError` before any probing when no choice of the candidate bits meets the
    budget's size, average-bits or compression terms: they depend on layer sizes only, so the ILP on a
    table with the model's layer sizes (and random scores) decides it in milliseconds. BitOps need the
    MACs of a forward pass and are left to the allocation after the search."""
    import warnings

    budget = budget if isinstance(budget, Budget) else Budget.from_dict(budget)
    sized = {k: v for k, v in budget.to_dict().items() if k != "bitops"}
    if not sized:
        return
    with warnings.catch_warnings():  # the real search repeats any warning (tied weights, ...)
        warnings.simplefilter("ignore")
        skeleton = search(model, None, bits=bits, method="random", scheme=scheme, skip_modules=skip_modules,
                          embeddings=embeddings, progress=False)
    allocate(skeleton, Budget(**sized), solver=solver, pin_first_last=pin_first_last, refine_passes=0, progress=False)


def quantize_with_infoq(model: nn.Module, config: InfoQConfig, *, table: SensitivityTable | None = None,
                        tokenizer=None, image_transform=None, skip_modules: Iterable[str] | None = None,
                        accelerator=None, progress: bool = True) -> QuantizationResult:
    """Quantize `model` in place as `config` says: the one place that runs calibrate -> search ->
    allocate -> pack (the transformers quantizer, the CLI and the recipes call it).

    With `config.policy` the policy is applied as given (calibration is needed only for layers with
    `a_bits`, or for GPTQ rounding). Otherwise the budget is checked, calibration data loaded (if
    the method needs it), sensitivities searched (or `table`, a saved search of this model, used),
    bits allocated under `config.budget` (refined on the whole model when calibration is given) and
    the model packed. When it packs with GPTQ, the allocation knows it: the costs are rescaled by
    GPTQ's output error relative to round-to-nearest's, measured on the inputs of the budget's
    uniform configuration (ILP only), and the refinement judges GPTQ's rounded weights on float
    inputs, starting also from the ILP on those prefix costs (`quant.gptq.gptq_candidates`,
    `sensitivity.rounding_costs`); the search and the refinement use the first
    `config.search_samples` calibration samples, GPTQ all of them.
    `skip_modules` (default `config.modules_to_not_convert`) stay float; what is left float is cast
    to `config.float_dtype` when set. `accelerator` (an `accelerate.Accelerator`) splits the probes
    and the refinement's candidates over its processes; every process ends with the same packed
    model (the caller saves it from the main process)."""
    skip = list(config.modules_to_not_convert or []) if skip_modules is None else list(skip_modules)
    times: dict[str, float] = {}
    batches = None

    def need_batches(why: str) -> list:
        nonlocal batches
        if batches is None:
            if config.calibration is None:
                raise ValueError(f"{why} needs calibration data: set InfoQConfig(calibration=CalibrationSpec(...) "
                                 "or a list of batches)")
            t = time.perf_counter()
            batches = load_calibration_batches(config.calibration, model, tokenizer=tokenizer,
                                               image_transform=image_transform, **config.calibration_options)
            times["calibration"] = time.perf_counter() - t
            if not batches:
                raise ValueError(f"{why} needs calibration data, and the calibration set is empty")
        return batches

    def search_batches(why: str) -> list:
        """The first `config.search_samples` calibration samples (all when unset), whole batches."""
        data = need_batches(why)
        return data if config.search_samples is None else _first_samples(data, config.search_samples)

    def held_out_batches() -> list | None:
        """As many calibration samples again, after the search's: the refinement's held-out check."""
        if config.search_samples is None:
            return None
        rest = batches[len(search_batches("the refinement")):]
        return _first_samples(rest, config.search_samples) or None

    scoring = replace(config.scheme, rounding="rtn")  # the probes perturb with round to nearest
    if config.policy is None and table is None:  # an impossible budget fails before any data is loaded
        check_budget_feasible(model, config.budget, bits=config.bits, scheme=scoring, skip_modules=skip,
                              solver=config.solver, pin_first_last=config.pin_first_last,
                              embeddings=config.quantize_embeddings)
    counts_tokens = config.rounding == "auto" and config.calibration is not None and is_causal_lm(model)
    rounding = resolve_rounding(config, model, need_batches("rounding='auto'") if counts_tokens else None)
    packing = replace(config.scheme, rounding=rounding)
    gptq = packing.rounding == "gptq"
    if config.policy is not None:
        if table is not None:
            raise ValueError("pass either a table to allocate on or a policy to apply (InfoQConfig(policy=...)), "
                             "not both")
        policy = config.policy
    else:
        if table is None:
            data = None if config.method in DATA_FREE_METHODS else search_batches(f"method {config.method!r}")
            t = time.perf_counter()
            table = search(model, data, bits=config.bits, method=config.method, seed=config.seed, scheme=scoring,
                           skip_modules=skip, embeddings=config.quantize_embeddings, accelerator=accelerator,
                           progress=progress, **config.method_options)
            times["search"] = time.perf_counter() - t
        refine = config.refine_passes if config.calibration is not None else 0  # data-free runs: ILP only
        candidates, starts = None, None
        if gptq:  # the allocation knows the rounding it is packed with: GPTQ's errors, GPTQ's weights
            t = time.perf_counter()
            widths = {n: table.bits for n in table.layers}
            gptq_data = need_batches("rounding='gptq'")
            # costs from candidates rounded on the inputs the budget's uniform configuration gives, as
            # sequential packing rounds a configuration near it: they rank the layers better
            prefix = uniform_start(table, config.budget, pin_first_last=config.pin_first_last)
            on_prefix = with_gptq_costs(table, gptq_candidates(model, widths, gptq_data, scheme=packing,
                                                               options=config.gptq_options, keep_weights=False,
                                                               prefix_bits=prefix, progress=progress))
            if refine:
                # the judge's weights (and the moves' costs) on float inputs, which favour no configuration
                # (prefix inputs make their own configuration exact and every move look worse); the ILP on
                # the prefix costs joins the starts (benchmarks/RESULTS.md, sections 13-14)
                candidates = gptq_candidates(model, widths, gptq_data, scheme=packing, options=config.gptq_options,
                                             keep_weights=True, progress=progress)
                starts = {"ilp-prefix": allocate(on_prefix, config.budget, solver=config.solver, alpha=config.alpha,
                                                 pin_first_last=config.pin_first_last, refine_passes=0)}
                table = with_gptq_costs(table, candidates)
            else:
                table = on_prefix
            times["gptq-aware costs"] = time.perf_counter() - t
        t = time.perf_counter()
        policy = allocate(table, config.budget, solver=config.solver, alpha=config.alpha,
                          pin_first_last=config.pin_first_last, model=model if refine else None,
                          calibration=search_batches("the refinement") if refine else None, refine_passes=refine,
                          seed=config.seed, gptq=candidates if refine else None,
                          validation=held_out_batches() if refine else None, refine_chains=config.refine_chains,
                          refine_starts=starts, accelerator=accelerator,
                          progress=progress)
        times["allocation"] = time.perf_counter() - t
        del candidates  # GPTQ's rounded candidates take about a byte per weight and width

    act_ranges = None
    if any(lb.a_bits is not None for lb in policy.values()):
        data = need_batches("a policy with activation bits (a_bits)")
        t = time.perf_counter()
        act_ranges = calibrate_activation_ranges(model, data, policy)
        times["activation ranges"] = time.perf_counter() - t

    float_bytes = model_size_bytes(model)
    params = {n: m.weight.numel() for n, m in policy_layers(model, policy).items()}
    gptq_batches = need_batches("rounding='gptq'") if gptq else None
    t = time.perf_counter()
    quantize_model(model, policy, scheme=packing, skip_modules=skip, act_ranges=act_ranges,
                   calibration=gptq_batches, gptq_options=config.gptq_options, progress=progress)
    times["packing (gptq)" if gptq else "packing"] = time.perf_counter() - t
    if config.float_dtype is not None:  # the leftovers are stored (and run) in it
        cast_float_leftovers(model, getattr(torch, config.float_dtype))

    summary = summarize(model, params, float_bytes, times, method=config.method if config.policy is None else None,
                        report=policy.report)
    summary["rounding"] = packing.rounding
    logger.info("\n%s", format_summary(summary))
    return QuantizationResult(model=model, policy=policy, table=table, summary=summary)


def _first_samples(batches: list, samples: int) -> list:
    """Whole batches from the start of `batches` until they hold at least `samples` samples."""
    taken, count = [], 0
    for batch in batches:
        if count >= samples:
            break
        taken.append(batch)
        count += _batch_rows(batch)
    return taken


def _batch_rows(batch) -> int:
    """Samples in a batch: a dict of tensors (input_ids first), an (inputs, labels) tuple or a tensor."""
    if isinstance(batch, Mapping):
        first = batch["input_ids"] if "input_ids" in batch else next(iter(batch.values()))
    else:
        first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return int(first.shape[0])


def summarize(model: nn.Module, params: dict[str, int], float_bytes: int, times: dict, *, method=None,
              report=None) -> dict:
    layers = packed_layers(model)
    avg_bits = mean_weight_bits({k: params.get(k, 0) for k in layers}, {k: m.w_bits for k, m in layers.items()})
    return {
        "method": method or "policy (no search)",
        "layers": {k: {"w_bits": m.w_bits, "a_bits": m.a_bits,
                       "group_size": effective_group_size(m.weight_shape, m.group_size)} for k, m in layers.items()},
        "quantized_layers": len(layers),
        "avg_bits": avg_bits,
        "size_bytes": model_size_bytes(model),
        "expected_size_bytes": expected_size_bytes(model),
        "float_size_bytes": float_bytes,
        "compression": compression_ratio(model) if layers else 1.0,
        "times_s": dict(times),
        "allocation": None if report is None else report.to_dict(),
    }



def _layer_pattern(name: str) -> str:
    """A layer name with its block indices folded into '*' (model.layers.3.mlp -> model.layers.*.mlp)."""
    return re.sub(r"\.\d+(?=\.|$)", ".*", name)


def condensed_policy(layers: dict[str, dict], max_rows: int = 24) -> list[str]:
    """One row per layer pattern (block indices folded into '*'), bits listed in block order."""
    rows: dict[str, list[str]] = defaultdict(list)
    for name, lb in layers.items():
        pattern = _layer_pattern(name)
        rows[pattern].append(str(lb["w_bits"]) + ("" if lb["a_bits"] is None else f"/a{lb['a_bits']}"))
    width = min(max((len(p) for p in rows), default=0), 48)
    lines = [f"  {p[-width:]:<{width}}  {' '.join(b)}" for p, b in rows.items()]
    if len(lines) > max_rows:
        lines = lines[: max_rows - 1] + [f"  ... {len(lines) - max_rows + 1} more layer patterns"]
    return lines


def group_size_lines(layers: dict[str, dict]) -> list[str]:
    """Which layers got which weight group size: a layer whose input width the requested size does not
    divide gets a smaller one (`quant.quantizer.effective_group_size`). Empty when not recorded."""
    by_group: dict[int | None, dict[str, int]] = defaultdict(Counter)
    for name, lb in layers.items():
        if "group_size" in lb:
            by_group[lb["group_size"]][_layer_pattern(name)] += 1
    lines = ["  weight group size per layer:"] if by_group else []
    for group, patterns in sorted(by_group.items(), key=lambda kv: -(kv[0] or 0)):
        label = "per output channel" if group is None else f"{group} weights per scale"
        lines.append(f"    {label}: {sum(patterns.values())} layers ({', '.join(patterns)})")
    return lines


def format_summary(summary: dict) -> str:
    hist = Counter(lb["w_bits"] for lb in summary["layers"].values())
    mib = 1 / 2**20
    out = [
        f"InfoQ quantization ({summary['method']}, {summary.get('rounding', 'rtn')} rounding): "
        f"{summary['quantized_layers']} layers packed",
        "  bits per layer pattern (w_bits[/a_bits], in block order):",
        *condensed_policy(summary["layers"]),
        "  layers per width: " + ", ".join(f"{b} bits x{c}" for b, c in sorted(hist.items())),
        *group_size_lines(summary["layers"]),
        f"  average weight bits {summary['avg_bits']:.3f}, weight compression {summary['compression']:.2f}x",
        f"  model size {summary['size_bytes'] * mib:.2f} MiB (float {summary['float_size_bytes'] * mib:.2f} MiB)",
        "  time: " + ", ".join(f"{k} {v:.2f}s" for k, v in summary["times_s"].items()),
    ]
    refined = (summary.get("allocation") or {}).get("refinement")
    if refined:
        out.insert(-1, f"  refinement on the whole model: KL to float {refined['kl_ilp']:.4g} (ILP) -> "
                       f"{refined['kl_final']:.4g}, start {refined['start']}"
                       + ("" if not refined.get("kl_starts") else " (of " + ", ".join(
                           f"{name} {kl:.4g}" for name, kl in refined["kl_starts"].items()) + ")")
                       + f", {refined['accepted']} of "
                       f"{refined['passes']} passes accepted"
                       + (f"; {refined.get('chains', 1)} chains, the held-out check on "
                          f"{refined['validation_batches']} more calibration batch(es) kept {refined['kept']}"
                          if refined.get("kl_validation") else ""))
    return "\n".join(out)


__all__ = ["QuantizationResult", "condensed_policy", "format_summary", "group_size_lines", "load_calibration_batches",
           "quantize_with_infoq", "summarize"]
