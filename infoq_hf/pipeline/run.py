"""`Run`: one quantization in progress, the value every pipeline stage takes and returns; and
`QuantizationResult`, what the caller gets back."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import torch.nn as nn

from ..policy import BitPolicy
from ..quant.scheme import PackingScheme
from ..sensitivity.table import SensitivityTable


@dataclass(frozen=True)
class Run:
    """The model being quantized and what the stages have found so far (each stage returns a new Run;
    the model itself is changed in place by packing)."""

    model: nn.Module
    skip_modules: list[str]  # layers kept in float
    tokenizer: Any = None  # for text calibration data (an object, or a name or folder to load it from)
    image_transform: Any = None  # for image calibration data
    accelerator: Any = None  # an `accelerate.Accelerator`: probes and refinement candidates split over processes
    progress: bool = True
    batches: list | None = None  # every calibration batch (GPTQ rounds with all of them)
    search_batches: list | None = None  # the first `search_samples` of them: the search's and the refinement's
    # the refinement's judge when larger than the search's (`refine_judge_samples`), the search's batches first
    judge_batches: list | None = None
    held_out: list | None = None  # the next as many (after the judge's): the refinement's held-out check
    scheme: PackingScheme | None = None  # the packing scheme, its rounding made concrete
    table: SensitivityTable | None = None
    policy: BitPolicy | None = None
    candidates: Any = None  # GPTQ's rounded candidates (computed, or the caller's): the judge's weights
    act_ranges: dict | None = None  # input ranges of the layers with activation bits
    float_bytes: int | None = None  # the model's size before packing
    params: dict | None = None  # weights per policy layer, counted before packing
    float_dtype: Any = None  # the dtype the float leftovers were cast to (None: left as loaded)
    times: dict = field(default_factory=dict)  # seconds per stage, in the order they ran

    def timed(self, label: str, started: float, **changes) -> Run:
        """This run with `changes` and the time since `started` recorded as `label`."""
        return replace(self, times={**self.times, label: time.perf_counter() - started}, **changes)


@dataclass(frozen=True)
class QuantizationResult:
    """What `quantize_with_infoq` did: the packed model (the one passed in, changed in place), the
    policy it was packed with (`policy.report` says how the allocation found it; None for a given
    policy), the sensitivity table (None when no search ran) and the summary `format_summary` prints."""

    model: nn.Module
    policy: BitPolicy
    table: SensitivityTable | None
    summary: dict = field(repr=False)
