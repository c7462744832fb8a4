"""`quantize_with_infoq`: the default pipeline, the stages a config selects, in order."""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch.nn as nn

from ..config import InfoQConfig
from ..sensitivity import SensitivityTable
from . import stages
from .run import QuantizationResult, Run
from .summary import format_summary, summarize

logger = logging.getLogger("infoq_hf")


def quantize_with_infoq(
    model: nn.Module,
    config: InfoQConfig,
    *,
    table: SensitivityTable | None = None,
    candidates=None,
    tokenizer=None,
    image_transform=None,
    skip_modules: Iterable[str] | None = None,
    accelerator=None,
    progress: bool = True,
) -> QuantizationResult:
    """Quantize `model` in place as `config` says (the transformers quantizer, the CLI and the recipes
    call it): with a budget, check it, calibrate, search (or use `table`, a saved search of this model,
    over the widths `config.bits` names), allocate, check (or refine) the allocation on the whole model
    when calibration data is given, and pack; with `bits` an int, pack every layer at that width; with
    `policy`, pack as it says.
    `candidates`: GPTQ's rounding of this model on this calibration data (`quant.gptq.gptq_candidates`,
    checked to fit), so that runs on other tables or budgets with the same uniform start skip that pass;
    with a `policy`, the packing takes each layer's codes from them.
    `skip_modules` (default `config.modules_to_not_convert`) stay float. `tokenizer` (default
    `config.tokenizer`) or `image_transform` turn calibration data into batches. `accelerator` (an
    `accelerate.Accelerator`) splits the probes, GPTQ's candidates and the refinement's moves over its
    processes; every process ends with the same packed model (the caller saves it from the main process)."""
    search = stages.searching(config)
    table = None if table is None else _table_for(model, config, table)
    skip = list(config.modules_to_not_convert or []) if skip_modules is None else list(skip_modules)
    run = Run(
        model,
        skip,
        tokenizer=config.tokenizer if tokenizer is None else tokenizer,
        image_transform=image_transform,
        accelerator=accelerator,
        progress=progress,
        table=table,
        candidates=candidates,
    )
    if search:
        chosen = [
            stages.check_embeddings,
            *([stages.check_budget] if table is None else []),
            stages.calibrate,
            stages.choose_rounding,
            stages.round_candidates,
            *([stages.score] if table is None else []),
            stages.count_leftovers,
            stages.gptq_costs,
            stages.allocate,
            *([stages.refine, stages.reround] if stages.refining(config) else []),
        ]
    else:
        chosen = [
            stages.check_embeddings,
            stages.calibrate,
            stages.choose_rounding,
            stages.given_policy if config.policy is not None else stages.uniform,
        ]
    for stage in [*chosen, stages.activation_ranges, stages.pack]:
        run = stage(run, config)
    if search:
        method = config.method
    elif config.policy is not None:
        method = "policy (no search)"
    else:
        method = f"uniform {config.uniform_bits}-bit (no search)"
    summary = summarize(run.model, run.params, run.float_bytes, run.times, method=method, report=run.policy.report)
    summary["rounding"] = run.scheme.rounding
    summary["clip_search"] = run.scheme.clip_search
    summary["float_dtype"] = None if run.float_dtype is None else str(run.float_dtype).removeprefix("torch.")
    logger.info("\n%s", format_summary(summary))
    return QuantizationResult(model=run.model, policy=run.policy, table=run.table, summary=summary)


def _table_for(model: nn.Module, config: InfoQConfig, table: SensitivityTable) -> SensitivityTable:
    """A table the caller passed, checked to belong to this model and run, over the config's widths."""
    if not stages.searching(config):
        raise ValueError(
            "pass either a table to allocate on or a policy to apply (InfoQConfig(policy=...) or "
            "InfoQConfig(bits=<int>)), not both"
        )
    modules = dict(model.named_modules())
    foreign = [name for name in table.layers if name not in modules]
    if foreign:
        raise ValueError(
            f"the table scores layers this model does not have ({foreign[:3]}): it was searched on "
            "another model; search this one or pass the table saved with it"
        )
    return table.restricted(config.bits)  # the config's widths are the candidates, also when it scored more
