"""What is kept of a calibration: its identity (spec plus a hash of the batches, for results), its record
(what a checkpoint's ``config.json`` keeps: JSON, no absolute local path) and a one-line log summary."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

import torch

from .sources import ready_batches
from .spec import RECORD_KEYS, CalibrationSpec, as_spec, is_dataset_object, is_text_list, spec_for_dataset_object


def calibration_identity(source: Any, *, spec: CalibrationSpec | None = None) -> dict[str, Any]:
    """A small JSON-able record of which calibration data a result was computed on.

    From a spec (or dict): the request only (``sha256`` is None). From batches: also ``sha256`` over
    every tensor in them (names, dtypes, shapes and bytes, inputs and labels), the actual sample count
    and, for text, the window length. The spec is taken from a ``CalibrationSet`` or ``spec=``.
    """
    batches = None
    if isinstance(source, CalibrationSpec) or (isinstance(source, Mapping) and not _looks_like_batch(source)):
        spec = as_spec(source, {})
    else:
        batches = ready_batches(source)
        spec = spec or getattr(source, "spec", None)

    identity: dict[str, Any] = {
        "dataset": None,
        "config": None,
        "split": None,
        "data_files": None,
        "num_samples": None,
        "seq_len": None,
        "seed": None,
        "sha256": None,
    }
    if spec is not None:
        clean = spec.to_dict()
        identity.update(
            dataset=clean["dataset"],
            config=spec.config,
            split=spec.split,
            data_files=clean["data_files"],
            num_samples=spec.num_samples,
            seq_len=spec.seq_len,
            seed=spec.seed,
        )
    if batches is not None:
        digest = hashlib.sha256()
        samples, seq_len = 0, None
        for batch in batches:
            items = sorted(batch.items()) if isinstance(batch, Mapping) else list(enumerate(batch))
            for key, value in items:
                _hash_value(digest, str(key), value)
            first = _first_tensor(batch)
            samples += first.shape[0] if first is not None and first.dim() else 1
            if isinstance(batch, Mapping) and isinstance(batch.get("input_ids"), torch.Tensor):
                seq_len = batch["input_ids"].shape[-1]
        identity.update(num_samples=samples, seq_len=seq_len, sha256=digest.hexdigest())
    return identity


def calibration_record(source: Any, **options: Any) -> dict[str, Any] | None:
    """What a checkpoint's config.json keeps of a calibration source: JSON only, no absolute local path.

    A spec, its dict, a path or a dataset name: the spec's fields with local paths reduced to their base
    names. A datasets object: its name, config and split, plus ``source`` ("a datasets.Dataset of N rows").
    A list of texts: ``source`` ("a list of N texts") and ``sha256`` of them. Ready batches: None (only
    their tensors would say what they were). ``options`` are the overrides used when loading (num_samples=,
    seq_len=, ...). A record dict (it has ``source``) is returned as it is."""
    if source is None:
        return None
    if isinstance(source, Mapping) and any(k in source for k in RECORD_KEYS):
        return json.loads(json.dumps(dict(source)))
    extra: dict[str, Any] = {}
    if is_text_list(source):
        digest = hashlib.sha256("\x00".join(source).encode())
        extra = {"source": f"a list of {len(source)} texts", "sha256": digest.hexdigest()}
        spec = CalibrationSpec()
    elif is_dataset_object(source):
        spec = spec_for_dataset_object(source, {})
    elif isinstance(source, (CalibrationSpec, Mapping, str, os.PathLike)):
        spec = as_spec(source, {})
    else:
        return None
    spec = spec.with_options(**options) if options else spec
    if is_dataset_object(spec.dataset):
        rows = getattr(spec.dataset, "num_rows", None)
        extra = {"source": f"a datasets.{type(spec.dataset).__name__}" + ("" if rows is None else f" of {rows} rows")}
    record = spec.to_dict()
    for key in ("data_files", "data_dir"):
        record[key] = _basenames(record[key])
    if isinstance(record["dataset"], str) and os.path.isabs(os.path.expanduser(record["dataset"])):
        record["dataset"] = _basenames(record["dataset"])
    return {**record, **extra}


def _basenames(value: Any) -> Any:
    """Local paths reduced to their last component (a record must not leak the user's folders)."""
    if isinstance(value, str):
        return os.path.basename(value.rstrip("/\\")) or value
    if isinstance(value, list):
        return [_basenames(v) for v in value]
    if isinstance(value, dict):
        return {k: _basenames(v) for k, v in value.items()}
    return value


def _looks_like_batch(value: Mapping) -> bool:
    return any(isinstance(v, torch.Tensor) for v in value.values())


def _hash_value(digest: Any, key: str, value: Any) -> None:
    digest.update(key.encode())
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())  # raw bytes, any dtype
    else:
        digest.update(repr(value).encode())


def _first_tensor(batch: Any) -> torch.Tensor | None:
    values = batch.values() if isinstance(batch, Mapping) else batch if isinstance(batch, (tuple, list)) else [batch]
    return next((v for v in values if isinstance(v, torch.Tensor)), None)


def describe_batches(batches: Iterable) -> str:
    """One line for logs, e.g. ``calibration: 128 samples in 16 batches; input_ids int64[8, 512], ...``."""
    batches = list(batches)
    if not batches:
        return "calibration: no batches"
    sizes = []
    for batch in batches:
        first = _first_tensor(batch)
        sizes.append(first.shape[0] if first is not None and first.dim() else 1)
    head = batches[0]
    items = (
        head.items()
        if isinstance(head, Mapping)
        else (zip(("x", "y"), head) if isinstance(head, (tuple, list)) else [("x", head)])
    )
    shapes = ", ".join(
        f"{k} {str(v.dtype).removeprefix('torch.')}{list(v.shape)}" if isinstance(v, torch.Tensor) else f"{k} {v!r}"
        for k, v in items
    )
    last = f" (last batch {sizes[-1]})" if len(sizes) > 1 and sizes[-1] != sizes[0] else ""
    return f"calibration: {sum(sizes)} samples in {len(batches)} batches{last}; {shapes}"
