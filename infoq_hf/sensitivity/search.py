"""`search(model, calibration, bits=..., method=...)` -> `SensitivityTable`.

One entry point for InfoQ and its baselines, so that allocations differ only by the
sensitivity measure. Probes (layer, bits) are independent given the fixed reference,
seed, samples and directions, so they are split across `accelerate` processes and the
gathered result equals the single-process one exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn as nn
from tqdm.auto import tqdm

from ..accounting import count_macs, leftover_bytes, tied_weights
from ..bitwidth import check_bits
from ..calibration import CalibrationSet, calibration_identity
from ..quant.apply import (
    batch_to_model_device,
    calibrate_activation_ranges,
    default_forward,
    quantizable_layers,
    tied_heads,
)
from ..quant.modules import oriented_weight
from ..quant.quantizer import WeightScheme
from ..quant.scheme import UNSET, PackingScheme, resolve_scheme
from .baselines import OracleScorer, hawq_scores, random_scores, relative_weight_errors, size_prior, weight_mse_scores
from .infoq import InfoQOptions, InfoQScorer
from .llamacpp import PRESETS, preference_weights, preset_types
from .probe import REFERENCE_BITS, Prober
from .table import SensitivityTable
from .task import check_calibration, detect_task, refuse_meta

logger = logging.getLogger(__name__)
METHODS = ("infoq", "hawq", "weight_mse", "size_only", "llamacpp", "random", "oracle")
# score weights alone; every other method needs calibration data
DATA_FREE_METHODS = ("weight_mse", "size_only", "llamacpp", "random")
METHOD_OPTIONS = {"llamacpp": ("preset",)}  # search options of the methods other than InfoQ


def _first_sample(batch):
    if isinstance(batch, Mapping):
        return {k: v[:1] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(v[:1] if isinstance(v, torch.Tensor) else v for v in batch)
    return batch[:1]


def as_batches(calibration, name="calibration") -> list:
    """One batch (a tensor or a mapping) or an iterable of batches, as a list; None gives []."""
    if calibration is None:
        return []
    if isinstance(calibration, (torch.Tensor, Mapping)):
        return [calibration]
    return list(calibration)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def public_model_name(name: str | None) -> str | None:
    """A model's name fit to publish: a Hub id as given, a local folder by its base name only (a saved
    table is uploaded with the checkpoint; an absolute path would leak user and folder names)."""
    if not name:
        return None
    name = str(name)
    if _HUB_ID.match(name) and not os.path.exists(name):
        return name
    return os.path.basename(os.path.normpath(name)) or None


def model_identity(model: nn.Module, layers: Mapping[str, nn.Module]) -> dict:
    h = hashlib.sha256()
    for name, layer in layers.items():
        h.update(name.encode())
        h.update(layer.weight.detach().float().cpu().numpy().tobytes())
    config = getattr(model, "config", None)
    return {
        "name_or_path": public_model_name(getattr(config, "_name_or_path", None))
        or getattr(model, "default_cfg", {}).get("architecture"),
        "class": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "quantized_weights_sha256": h.hexdigest()[:16],
    }


def search(
    model: nn.Module,
    calibration: Iterable | None,
    *,
    bits: int | Iterable[int] = (2, 3, 4, 8),
    method: str = "infoq",
    seed: int = 0,
    scheme: PackingScheme | None = None,
    group_size: int | None = UNSET,
    conv_group_size: int | None = UNSET,
    symmetric: bool = UNSET,
    clip_search: bool = UNSET,
    skip_modules: Iterable[str] = (),
    skip_types: tuple = (),
    embeddings: bool = False,
    forward: Callable | None = None,
    task: str = "auto",
    heldout: Iterable | None = None,
    score_activations: bool = False,
    prefix_cache: bool = True,
    hutchinson_samples: int = 8,
    candidates=None,
    accelerator=None,
    progress: bool = True,
    **options,
) -> SensitivityTable:
    """Score every quantizable layer at every candidate bit-width (`bits`: a list, or one int).

    `calibration`: a list/iterable of batches (dicts of model inputs with optional `labels`, or
    `(inputs, labels)` tuples). `method`: "infoq" (default), "hawq", "weight_mse", "size_only",
    "llamacpp" (option `preset`: "q4_k_m" or "q3_k_m"), "random" or "oracle" (`baselines`). `scheme`: the
    `PackingScheme` the model will be packed with (default: one scale per output channel, asymmetric, no
    clipping search), or its fields as shorthand (`group_size=`, `conv_group_size=`, `symmetric=`,
    `clip_search=`); the table records it. `options` go to InfoQ (see `InfoQOptions`: change_estimate
    ("first_order" by default, or the paper's "probe"), num_directions, estimator, observers, lm_target,
    ...). `heldout` is the oracle's evaluation data (default: calibration). `accelerator`: an
    `accelerate.Accelerator`; probes (or the first order's backward passes) are split over its processes.
    `embeddings`: score the `nn.Embedding`s too (rows grouped like a Linear's inputs); an output head tied
    to one (an LM head sharing the input embedding) is part of it: one tensor, one width, its MACs counted
    with it. `candidates`: GPTQ's rounding of every layer at every width (`quant.gptq.gptq_candidates` with
    `keep_weights=True`) for InfoQ's first-order "per_width" scores: each layer is perturbed by the weights
    the model will be packed with instead of round to nearest's."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {METHODS}")
    scheme = resolve_scheme(
        scheme,
        PackingScheme(),
        group_size=group_size,
        conv_group_size=conv_group_size,
        symmetric=symmetric,
        clip_search=clip_search,
    )
    if isinstance(bits, int) and not isinstance(bits, bool):
        bits = [bits]  # one candidate width
    if bits is None or isinstance(bits, (str, bytes)) or not isinstance(bits, Iterable):
        raise ValueError(
            f"bits must be the candidate bit-widths to score, an int or a list such as [2, 3, 4, 8], got {bits!r}"
        )
    bits = sorted({check_bits(b) for b in bits})
    if not bits:
        raise ValueError("bits must name at least one candidate bit-width")
    forward = forward or default_forward
    layers = quantizable_layers(model, skip_modules, skip_types, embeddings=embeddings)
    heads = tied_heads(model, [n for n, m in layers.items() if isinstance(m, nn.Embedding)])
    layers = {n: m for n, m in layers.items() if n not in heads}  # a tied head follows its embedding
    tied = {n: keys for n, keys in tied_weights(model, layers).items() if not isinstance(layers[n], nn.Embedding)}
    if tied:  # a packed copy of one side would store the tensor twice and silently untie the model
        warnings.warn(
            f"layers {sorted(tied)} share their weight with {sorted({k for v in tied.values() for k in v})} "
            "(tied weights); they stay in float to keep the tie. Pass skip_modules to silence this.",
            stacklevel=2,
        )
        layers = {n: m for n, m in layers.items() if n not in tied}
    if not layers:
        raise ValueError("the model has no quantizable Linear/Conv2d layers (after skip_modules/skip_types)")
    batches = as_batches(calibration)
    refuse_meta(model, batches)
    batches = [batch_to_model_device(b, model) for b in batches]
    needs_data = method not in DATA_FREE_METHODS
    if needs_data and not batches:
        raise ValueError(f"method {method!r} needs calibration batches, and the calibration set is empty")
    unknown = sorted(set(options) - set(METHOD_OPTIONS.get(method, ())))
    if method != "infoq" and unknown:
        known = METHOD_OPTIONS.get(method)
        raise ValueError(
            f"options {unknown} do not apply to method={method!r}; "
            + (f"it takes {list(known)}" if known else "InfoQ's options apply to method='infoq' only")
        )
    infoq_options = InfoQOptions.from_dict(options) if method == "infoq" else None
    if candidates is not None and not (
        infoq_options is not None
        and infoq_options.scores == "per_width"
        and infoq_options.change_estimate == "first_order"
    ):
        raise ValueError(
            "candidates= perturbs layers by GPTQ's rounding in InfoQ's first-order per-width scores only: pass "
            "method='infoq', scores='per_width', change_estimate='first_order', or no candidates"
        )
    if candidates is not None and not candidates.has_weights():
        raise ValueError("candidates= needs GPTQ's rounded weights: compute them with keep_weights=True")
    preset = options.get("preset", "q4_k_m") if method == "llamacpp" else None
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown llama.cpp preset {preset!r}; choose one of {PRESETS}")
    task = (
        detect_task(model, batches[0]) if task == "auto" and batches else (task if task != "auto" else "classification")
    )
    if task not in ("classification", "causal_lm"):
        raise ValueError(f"task must be 'auto', 'classification' or 'causal_lm', got {task!r}")
    check_calibration(
        model, batches, _first_sample(batches[0]) if batches else None, forward, task, method, sample_of=_first_sample
    )

    def schemes(name: str, b: int) -> WeightScheme:
        return scheme.weight_scheme(layers[name], b)

    is_main = accelerator is None or accelerator.is_main_process
    started = time.perf_counter()
    cost = {"layer_evals": 0, "forward_passes": 0}
    traces = None
    a_scores = None
    calibrated_info = None  # (alpha, t2) of the calibrated InfoQ costs
    with torch.no_grad():
        macs = count_macs(model, _first_sample(batches[0]), forward) if batches else {}

    if method == "weight_mse":
        w_scores = weight_mse_scores(layers, bits, schemes)
    elif method in ("size_only", "llamacpp"):  # alpha_l * t2(l, b), as calibrated InfoQ: the same costs downstream
        t2 = relative_weight_errors(layers, bits, schemes)
        alpha = size_prior(layers)
        if method == "llamacpp":
            types = preset_types(model, layers, preset, heads=set(heads.values()))
            alpha = {n: a * w for (n, a), w in zip(alpha.items(), preference_weights(types, preset).values())}
            if all(t == types[next(iter(types))] for t in types.values()):
                warnings.warn(
                    f"llamacpp: no layer matched a tensor role the {preset} preset favours (v_proj, "
                    "down_proj, ...); the scores equal size_only's",
                    stacklevel=2,
                )
        w_scores = {n: {b: alpha[n] * t2[n][b] for b in bits} for n in layers}
        calibrated_info = (alpha, t2)
    elif method == "random":
        w_scores = random_scores(layers, bits, seed)
    elif method == "hawq":
        bar = tqdm(total=hutchinson_samples, desc="hawq: Hutchinson samples", disable=not (progress and is_main))
        w_scores, traces = hawq_scores(
            model, layers, bits, schemes, batches, forward, task, hutchinson_samples, seed, bar
        )
        bar.close()
        cost = {
            "layer_evals": hutchinson_samples * len(batches) * len(layers),
            "forward_passes": hutchinson_samples * len(batches),
        }
    else:
        eval_batches = batches if method == "infoq" else (as_batches(heldout) or batches)
        calibrated = method == "infoq" and infoq_options.scores == "calibrated"
        probe_bits = probe_widths(infoq_options, bits) if calibrated else bits
        if calibrated:  # the table records the widths probed, "auto" resolved
            infoq_options = dataclasses.replace(infoq_options, probe_bits=probe_bits)
        w_scores, a_scores, cost = _probe_all(
            model,
            layers,
            eval_batches,
            forward,
            schemes,
            bits,
            method=method,
            task=task,
            infoq_options=infoq_options,
            seed=seed,
            prefix_cache=prefix_cache,
            score_activations=score_activations,
            accelerator=accelerator,
            show_progress=progress and is_main,
            weight_bits=probe_bits,
            candidates=candidates,
        )
        if calibrated:  # activation scores keep the Eq. 4 form: an activation grid has no weight error
            t2 = relative_weight_errors(layers, sorted(set(bits) | set(probe_bits)), schemes)
            power = infoq_options.change_power
            alpha = {n: _fit_alpha({b: v**power for b, v in w_scores[n].items()}, t2[n], probe_bits) for n in layers}
            w_scores = {n: {b: alpha[n] * t2[n][b] for b in bits} for n in layers}
            calibrated_info = (alpha, t2)
    elapsed = time.perf_counter() - started
    if len(layers) > 1 and all(w_scores[n] == w_scores[next(iter(layers))] for n in layers):
        warnings.warn(
            f"every layer got the same {method} scores {w_scores[next(iter(layers))]}: the search cannot "
            "tell the layers apart, so an allocation from this table means nothing (vanishing or constant "
            "activations? check the calibration data and the model's outputs)",
            RuntimeWarning,
            stacklevel=2,
        )

    table_layers = {}
    for name, layer in layers.items():
        weight = oriented_weight(layer)
        layer_macs = macs.get(name, 0) + sum(macs.get(h, 0) for h, e in heads.items() if e == name)
        kind = (
            "conv2d" if isinstance(layer, nn.Conv2d) else "embedding" if isinstance(layer, nn.Embedding) else "linear"
        )
        entry = {
            "params": weight.numel(),
            "macs": int(layer_macs),
            "shape": list(weight.shape),
            "kind": kind,
            "w": w_scores[name],
        }
        if a_scores is not None:
            entry["a"] = a_scores[name]
        if calibrated_info is not None:
            entry["alpha"], entry["t2"] = calibrated_info[0][name], calibrated_info[1][name]
        if method == "llamacpp":
            entry["llamacpp_type"] = types[name]
        table_layers[name] = entry
    meta = {
        "model": model_identity(model, layers),
        "calibration": {
            "batches": len(batches),
            **calibration_identity(calibration if isinstance(calibration, CalibrationSet) else batches),
        }
        if batches
        else None,
        "task": task,
        "seed": seed,
        **scheme.codes_settings(),  # the scores are of round-to-nearest packing
        "float_bytes": leftover_bytes(model, layers),
        "reference_bits": REFERENCE_BITS,
        "options": vars(infoq_options) if infoq_options else ({"preset": preset} if preset else {}),
        "cost": {
            "wall_s": round(elapsed, 3),
            "prefix_cache": prefix_cache,
            "processes": accelerator.num_processes if accelerator is not None else 1,
            **cost,
        },
    }
    if traces is not None:
        meta["hessian_trace"] = traces
    if candidates is not None:  # the costs are GPTQ's already (`rounding_costs.with_gptq_costs` keeps them)
        meta["costs_rounding"] = "gptq"
        meta["gptq_costs"] = {k: v for k, v in candidates.meta.items() if k != "prefix_bits"}
    return SensitivityTable(method, bits, table_layers, meta)


def probe_widths(options: InfoQOptions, bits: list[int]) -> list[int]:
    """The widths the calibrated costs probe at: `probe_bits`, or for "auto" the narrowest candidate of 3
    bits or more (3 when there is none)."""
    if options.probe_bits == "auto":
        return [min((b for b in bits if 3 <= b < 8), default=3)]
    widths = options.probe_bits if isinstance(options.probe_bits, (list, tuple)) else [options.probe_bits]
    return sorted(set(int(b) for b in widths))


def _fit_alpha(change: dict[int, float], t2: dict[int, float], widths: list[int]) -> float:
    """alpha_l with D(l, b) ~ alpha_l * t2(l, b) over the probed widths (least squares through 0)."""
    den = sum(t2[b] ** 2 for b in widths)
    return sum(change[b] * t2[b] for b in widths) / den if den > 0 else 0.0


def _first_order_scores(scorer, names, widths, raw, accelerator, on_batch, candidates=None) -> list[tuple]:
    """InfoQ's weight scores from first-order information changes (`InfoQScorer.first_order_changes`),
    each layer perturbed by round to nearest or by GPTQ's `candidates`. The observer terms' backward
    passes are split over the processes and gathered; each process then scores its share of the layers,
    which `_probe_all`'s gather joins like probe results."""
    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    widths = [b for b in widths if b != REFERENCE_BITS]
    terms = scorer.terms[rank::world]
    perturbation = None
    if candidates is not None:

        def perturbation(name, bits):  # GPTQ's weight minus the reference the prober holds, made when needed
            weight = scorer.prober.layers[name].weight.detach()
            return candidates.weight(name, bits).to(weight) - weight

    changes = (
        scorer.first_order_changes(
            {n: widths for n in names}, terms, on_batch, perturbation=perturbation, magnitude=scorer.opts.magnitude
        )
        if terms
        else {}
    )
    if world > 1:
        from accelerate.utils import gather_object

        changes = {t: c for part in gather_object([changes]) for t, c in part.items()}
    results = []
    for name in names[rank::world]:
        for b in widths:
            change = scorer.relative_change(name, {t: abs(c[name][b]) for t, c in changes.items()})
            score = change if raw else scorer.eq4_score(change, b)
            if not math.isfinite(score):
                raise ValueError(f"the infoq score of layer {name!r} at {b} bits is not finite")
            results.append(("w", name, b, float(score)))
    return results


def _probe_all(
    model,
    layers,
    batches,
    forward,
    schemes,
    bits,
    *,
    method,
    task,
    infoq_options,
    seed,
    prefix_cache,
    score_activations,
    accelerator,
    show_progress,
    weight_bits=None,
    candidates=None,
):
    """Run every (layer, bits) probe assigned to this process; gather all results. Returns the weight
    scores, the activation scores (None unless `score_activations`) and the cost counts.

    Weights are probed at `weight_bits` (default `bits`), activations at `bits`. InfoQ weight
    probes record the information change D(l, b) with the calibrated form and the Eq. 4 score
    otherwise; the oracle records the loss change."""
    widths = {"w": list(bits if weight_bits is None else weight_bits), "a": list(bits)}
    kinds = ["w"] + (["a"] if score_activations else [])
    first_order = method == "infoq" and infoq_options.change_estimate == "first_order"
    probed = [k for k in kinds if not (k == "w" and first_order)]  # kinds measured by one pass per probe
    jobs = [(kind, name, b) for kind in probed for name in layers for b in widths[kind] if b != REFERENCE_BITS]
    rank = accelerator.process_index if accelerator is not None else 0
    world = accelerator.num_processes if accelerator is not None else 1
    mine = jobs[rank::world]
    results = []
    with Prober(model, layers, batches, forward, schemes, prefix_cache) as prober:
        if jobs:
            prober.build_prefix_cache()
        bar = tqdm(
            total=len(mine) + (len(batches) if first_order else 0),
            desc=f"{method}: probes" if jobs else f"{method}: first-order changes",
            disable=not show_progress,
        )
        for kind in kinds:
            kind_jobs = [j for j in mine if j[0] == kind]
            if kind == "a":
                ranges = calibrate_activation_ranges(
                    model, batches, {n: {"w_bits": 8, "a_bits": 8} for n in layers}, forward
                )
                prober.set_activation_reference(ranges)
            if kind in probed and not kind_jobs and world == 1:
                continue
            scorer = InfoQScorer(prober, task, infoq_options, seed) if method == "infoq" else OracleScorer(prober, task)
            raw = kind == "w" and method == "infoq" and infoq_options.scores in ("calibrated", "per_width")
            if kind not in probed:
                results += _first_order_scores(
                    scorer, list(layers), widths["w"], raw, accelerator, bar.update, candidates
                )
                continue
            for _, name, b in kind_jobs:
                perturb = prober.weight_at(name, b) if kind == "w" else prober.activation_at(name, b)
                with perturb:
                    score = scorer.information_change(name) if raw else scorer.score_current(name, b)
                if not torch.isfinite(torch.tensor(score)):
                    raise ValueError(f"the {method} score of layer {name!r} at {b} bits is not finite")
                results.append((kind, name, b, float(score)))
                bar.update(1)
        bar.close()
        layer_evals = prober.layer_evals
    if accelerator is not None and world > 1:
        from accelerate.utils import gather_object

        results = gather_object(results)
        layer_evals = sum(gather_object([layer_evals]))
    cost = {"layer_evals": layer_evals, "forward_passes": (len(jobs) + (world if first_order else 0)) * len(batches)}
    out = {k: {name: {} for name in layers} for k in kinds}
    for kind, name, b, score in results:
        out[kind][name][b] = score
    for kind in kinds:
        for name in layers:
            if REFERENCE_BITS in widths[kind]:
                out[kind][name][REFERENCE_BITS] = 0.0  # the probe equals the reference
    return out["w"], (out["a"] if score_activations else None), cost
