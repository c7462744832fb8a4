"""The run's calibration data: loading it in the form the model takes, splitting it between the
search and the refinement's held-out check, and the rounding its size calls for."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn as nn
from transformers import AutoTokenizer

from ..calibration import CalibrationSet, is_timm_model, load_calibration
from ..config import InfoQConfig
from ..quant.apply import batch_to_model_device
from ..sensitivity.task import is_causal_lm

GPTQ_MIN_TOKENS = 4096  # "auto" rounds with GPTQ from this many calibration tokens on (see resolve_rounding)


def load_calibration_batches(calibration, model: nn.Module, *, tokenizer=None, image_transform=None, **options) -> list:
    """The batches `calibration` (anything `calibration.load_calibration` takes) names, in the form the
    model takes: dicts of model inputs, or `(images, labels)` tuples for a timm model. Images without
    labels get the float model's own top-1 class (the sensitivity methods score how quantization
    changes the task, and folder names need not match the model's class indices). The tensors are
    placed on the model's (first) device. Ready batches come back as they are. `tokenizer`: an object,
    or a Hub name or folder to load one from."""
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = AutoTokenizer.from_pretrained(os.fspath(tokenizer))
    batches = load_calibration(
        calibration,
        tokenizer=tokenizer,
        image_transform=image_transform,
        model=model,
        format="tuple" if is_timm_model(model) else "dict",
        **options,
    )
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


def resolve_rounding(config: InfoQConfig, model: nn.Module, batches: list | None = None) -> str:
    """`config.rounding`, with "auto" made concrete: GPTQ for a causal LM whose calibration `batches`
    hold at least GPTQ_MIN_TOKENS tokens, round to nearest otherwise: from a calibration as small as
    a few windows GPTQ's Hessians are rank-deficient and it overfits them (benchmarks/gptq.py)."""
    if config.rounding != "auto":
        return config.rounding
    if batches is None or not is_causal_lm(model):
        return "rtn"
    tokens = sum(int(b["input_ids"].numel()) for b in batches if isinstance(b, dict) and "input_ids" in b)
    return "gptq" if tokens >= GPTQ_MIN_TOKENS else "rtn"


def first_samples(batches: list, samples: int) -> list:
    """Whole batches from the start of `batches` until they hold at least `samples` samples."""
    taken, count = [], 0
    for batch in batches:
        if count >= samples:
            break
        taken.append(batch)
        count += batch_rows(batch)
    return taken


def batch_rows(batch) -> int:
    """Samples in a batch: a dict of tensors (input_ids first), an (inputs, labels) tuple or a tensor."""
    if isinstance(batch, Mapping):
        first = batch["input_ids"] if "input_ids" in batch else next(iter(batch.values()))
    else:
        first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return int(first.shape[0])
