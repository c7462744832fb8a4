"""Text into batches: documents tokenised and packed into ``seq_len`` windows.

Each document is tokenised without special tokens, followed by ``eos`` when the tokenizer has one; the
documents are concatenated and the stream is cut into consecutive non-overlapping ``seq_len`` windows,
the first ``num_samples`` of which are the calibration set. Empty / whitespace-only documents are
skipped."""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch

from .sources import seeded_rows
from .spec import CalibrationSpec

_READ_CHUNK = 64  # rows tokenised per call: batched tokenisation is much faster than row by row


def tokenizer_for(model: Any) -> Any:
    """The tokenizer saved with a transformers model (`model.name_or_path`: a folder, or a Hub id whose
    files are fetched like the model's); ValueError naming the fix when there is none."""
    hint = "pass tokenizer=AutoTokenizer.from_pretrained(...) (a tokenizer is needed to calibrate on text)"
    name = getattr(model, "name_or_path", None) if model is not None else None
    if not name:
        raise ValueError(f"no tokenizer given; {hint}")
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=os.path.isdir(name))
    except (OSError, ValueError) as e:
        raise ValueError(f"no tokenizer given and none loads from {name!r} ({e}); {hint}") from e


def text_batches(ds: Any, spec: CalibrationSpec, tokenizer: Any, format: str, lm_labels: bool) -> list:
    """The first ``num_samples`` packed ``seq_len`` windows of `ds`'s text column (seeded order), in batches."""
    needed = spec.num_samples * spec.seq_len
    eos = getattr(tokenizer, "eos_token_id", None)
    stream: list[int] = []
    documents = 0
    for chunk in seeded_rows(ds, spec, [spec.text_column], _READ_CHUNK):
        texts = chunk[spec.text_column]
        for value in texts:
            if value is not None and not isinstance(value, str):
                raise ValueError(
                    f"text_column={spec.text_column!r} holds {type(value).__name__} values, not strings; "
                    "set text_column= to a column of plain text"
                )
        texts = [t for t in texts if t and not t.isspace()]
        if not texts:
            continue
        # verbose=False: documents longer than model_max_length are fine here, they get packed.
        for ids in tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]:
            stream.extend(ids)
            if eos is not None:
                stream.append(eos)
        documents += len(texts)
        if len(stream) >= needed:  # stop reading: never tokenise more of a big dataset than needed
            break
    samples = min(spec.num_samples, len(stream) // spec.seq_len)
    if samples < spec.num_samples:
        what = (
            f"the dataset yielded only {samples} window(s) of seq_len={spec.seq_len} tokens "
            f"({len(stream)} tokens from {documents} documents), fewer than num_samples={spec.num_samples}"
        )
        if samples == 0:
            raise ValueError(f"{what}; set seq_len to at most {len(stream)}, or use more data")
        warnings.warn(
            f"{what}; calibrating on those {samples}. Set num_samples={samples} (or a lower seq_len, "
            "or more data) to silence this",
            stacklevel=3,
        )
    input_ids = torch.tensor(stream[: samples * spec.seq_len], dtype=torch.long).view(samples, spec.seq_len)

    batches = []
    for ids in input_ids.split(spec.batch_size):
        labels = ids.clone() if lm_labels else None
        if format == "tuple":
            batches.append((ids, labels))
        else:
            batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            if labels is not None:
                batch["labels"] = labels
            batches.append(batch)
    return batches
