"""The library's own save: a packed checkpoint plus what a reader wants beside it, in one transaction.

transformers' plain `model.save_pretrained(folder)` already writes a packed checkpoint that reloads with
`from_pretrained(folder)` after `import infoq_hf` (the quantizer's hooks put the policy and scheme in
`config.json` and the run's summary in the safetensors header). `save(model, folder, ...)` writes that
checkpoint (or `save_quantized`'s, for timm and plain modules) together with the tokenizer, the run's
summary (`infoq_summary.json`), the sensitivity table (`infoq_sensitivity.json`), the PNG plots and the
model card (`README.md`), all staged in one folder and moved into place whole or not at all.
`infoq_hf.push_to_hub` and the `infoq` CLI write their folders with the same function.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch.nn as nn
from huggingface_hub import try_to_load_from_cache
from transformers import AutoTokenizer

from .card import card_file_for, write_model_card
from .checkpoint import atomic_checkpoint, read_json
from .checkpoint_info import (
    SUMMARY_FILE,
    TABLE_FILE,
    CheckpointInfo,
    packed_layers_summary,
    read_checkpoint,
)
from .integrations.timm import is_timm_model, write_quantized
from .integrations.transformers import quantization_result
from .origin import float_model_origin, is_repo_id
from .sensitivity.table import SensitivityTable


def save(
    model: nn.Module,
    folder: str | os.PathLike,
    *,
    tokenizer=None,
    table: SensitivityTable | None = None,
    policy=None,
    config=None,
    summary: Mapping | None = None,
    base_model: str | None = None,
    metrics: Sequence[Mapping] | None = None,
    max_shard_size: int | str | None = None,
) -> Path:
    """Save a packed model with its tokenizer, summary, sensitivity table, plots and model card.

    model: an InfoQ transformers model (quantized on load, by `quantize_pretrained`, or loaded from an
        InfoQ checkpoint), or a timm / plain module packed by `quantize_with_infoq` / `quantize_model`.
    tokenizer: saved beside the weights (the card's snippet then uses it). Default: the tokenizer saved
        with the model's source (its float folder, its cached Hub download, or the checkpoint it was loaded
        from), read without network; False saves none.
    table: the sensitivity table (default: the run's, where the model carries it, else the folder's own).
    policy, config: for timm / plain modules, the policy and `InfoQConfig` they were packed with
        (recorded in `infoq_config.json`; transformers models carry theirs in `config.json`).
    summary: the run's summary for a module that does not carry one (`QuantizationResult.summary`).
    base_model: the float model's Hub id (default: the id it was loaded from, or the `_name_or_path`
        its local folder's `config.json` names).
    metrics: what you measured, shown in the card, e.g. `[{"metric": "perplexity", "data": "wikitext-2",
        "quantized": 14.2, "float": 12.9}]`.
    max_shard_size: as in transformers' `save_pretrained` (transformers models only).

    The folder is written whole or not at all; files in it that this save does not write are kept.
    Returns the folder."""
    beside = Path(folder) / TABLE_FILE  # a table saved into the folder first (as the recipes do)
    result = quantization_result(model)
    if table is None and (result is None or result.table is None) and beside.is_file():
        table = SensitivityTable.load(beside)
    with atomic_checkpoint(folder) as staging:
        info = write_checkpoint_folder(
            model,
            staging,
            tokenizer=tokenizer,
            table=table,
            policy=policy,
            config=config,
            summary=summary,
            base_model=base_model,
            metrics=metrics,
            max_shard_size=max_shard_size,
        )
        write_model_card(staging, info, card_location(folder), base_model=base_model, card_file=card_file_for(folder))
    return Path(folder)


def card_location(folder: str | os.PathLike) -> str:
    """How the card's snippet names a local folder: as given when relative, else by its name (no absolute
    path goes into a card)."""
    return Path(folder).as_posix() if not Path(folder).is_absolute() else Path(folder).name


def write_checkpoint_folder(
    model: nn.Module,
    folder: Path,
    *,
    tokenizer=None,
    table=None,
    policy=None,
    config=None,
    summary: Mapping | None = None,
    base_model: str | None = None,
    metrics: Sequence[Mapping] | None = None,
    max_shard_size: int | str | None = None,
) -> CheckpointInfo:
    """Write the checkpoint, tokenizer, summary and table of `model` into the empty `folder` (no card)."""
    folder = Path(folder)
    packed_layers_summary(model)  # refuses a model without packed layers before anything is written
    if is_transformers_model(model):
        qcfg = getattr(model.config, "quantization_config", None)
        qdict = qcfg.to_dict() if hasattr(qcfg, "to_dict") else qcfg
        if not qdict or qdict.get("quant_method") != "infoq":
            raise ValueError(
                "this transformers model was not quantized with InfoQ through transformers; quantize it "
                "with from_pretrained(..., quantization_config=InfoQConfig(...)) or "
                "infoq_hf.quantize_pretrained(model, config) before saving it with infoq_hf.save"
            )
        model.save_pretrained(folder, **({} if max_shard_size is None else {"max_shard_size": max_shard_size}))
    else:
        write_quantized(model, folder, policy, config=config)
    if tokenizer is None:
        tokenizer = known_tokenizer(model)
    if tokenizer:
        tokenizer.save_pretrained(folder)
    table = write_summary_and_table(model, folder, table, summary=summary, base_model=base_model, metrics=metrics)
    return read_checkpoint(folder, table=table)


TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json")


def known_tokenizer(model):
    """The tokenizer saved with a transformers model's source (`config._name_or_path`: a local folder, or a
    Hub id already in the local cache); None when there is none. Reads no network."""
    source = getattr(getattr(model, "config", None), "_name_or_path", None)
    if not source or not is_transformers_model(model):
        return None
    if Path(source).is_dir():
        present = any((Path(source) / f).is_file() for f in TOKENIZER_FILES)
    elif is_repo_id(source):
        present = any(isinstance(try_to_load_from_cache(source, f), str) for f in TOKENIZER_FILES)
    else:
        present = False
    if not present:
        return None
    try:
        return AutoTokenizer.from_pretrained(source, local_files_only=True)
    except Exception:  # noqa: BLE001 - an unreadable or partial tokenizer: save the model without one
        return None


def is_transformers_model(model) -> bool:
    return hasattr(model, "save_pretrained") and hasattr(model, "config") and not is_timm_model(model)


def write_summary_and_table(
    model: nn.Module,
    folder: Path,
    table: SensitivityTable | None = None,
    *,
    summary: Mapping | None = None,
    base_model: str | None = None,
    metrics: Sequence[Mapping] | None = None,
) -> SensitivityTable | None:
    """Beside a checkpoint just saved from `model`: `infoq_summary.json` (the run's summary, the measured
    sizes, the layer sizes, the float model's Hub id, name, license and pipeline_tag where known) and the
    sensitivity table (`table`, else the run's). Returns the table."""
    result = quantization_result(model)
    params, measured = packed_layers_summary(model)
    run = summary if summary is not None else (result.summary if result is not None else {})
    record = {**_jsonable(run), **measured}
    quantizer = getattr(model, "hf_quantizer", None)
    source = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    if getattr(quantizer, "pre_quantized", False) and source:
        # loaded from an InfoQ checkpoint: keep what its own files said about its float model and its run
        saved = _checkpoint_file(source, SUMMARY_FILE)
        prior = read_json(saved) if saved is not None else {}
        for key in (
            "base_model",
            "model_name",
            "license",
            "pipeline_tag",
            "metrics",
            "method",
            "calibration",
            "allocation",
        ):
            if prior.get(key) is not None:
                record.setdefault(key, prior[key])
        saved_table = _checkpoint_file(source, TABLE_FILE) if table is None else None
        table = SensitivityTable.load(saved_table) if saved_table is not None else table
    else:  # quantized here: `source` is the float model
        for key, value in float_model_origin(model, source).items():
            record.setdefault(key, value)
    if base_model is not None:
        record["base_model"] = base_model
    if metrics is not None:
        record["metrics"] = _jsonable(list(metrics))
    (folder / SUMMARY_FILE).write_text(json.dumps({**record, "params": params}, indent=1))
    table = table if table is not None or result is None else result.table
    if table is not None:
        table.save(folder / TABLE_FILE)
    return table


def _checkpoint_file(source, name: str) -> Path | None:
    """File `name` of the checkpoint a model was loaded from: a local folder, or a Hub id (downloaded if the
    Hub answers); None when there is none."""
    if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
        path = Path(source) / name
        return path if path.is_file() else None
    if not is_repo_id(source):
        return None
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(source, name))
    except Exception:  # noqa: BLE001 - missing file or unreachable Hub: nothing to carry over
        return None


def _jsonable(value):
    return json.loads(json.dumps(value, default=lambda o: o.to_dict() if hasattr(o, "to_dict") else str(o)))


__all__ = ["card_location", "known_tokenizer", "save", "write_checkpoint_folder", "write_summary_and_table"]
