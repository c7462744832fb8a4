"""Calibration data: a `datasets` dataset (hub, local files, in memory, or a stream) -> a short list of batches.

A calibration set is small (tens to hundreds of samples) and the probing engine replays it once per
layer and bit-width, so it is materialised once as a plain list of batches, on the CPU:

- text: ``{"input_ids": LongTensor[B, seq_len], "attention_mask": ones}`` (plus ``"labels"``, a copy of
  ``input_ids``, with ``lm_labels=True``); ``format="tuple"`` gives ``(input_ids, labels or None)``.
- images: ``{"pixel_values": FloatTensor[B, C, H, W], "labels": LongTensor[B]}``; ``format="tuple"``
  gives ``(x, y)``. Without a ``label_column`` there is no labels entry (``(x, None)``).

Sample selection is deterministic given ``seed``:

- map-style datasets: document/image order is ``dataset.shuffle(seed=seed)``; rows are read in that
  order only until enough tokens (or images) are collected.
- streams (``streaming=True`` or an ``IterableDataset``): ``stream.shuffle(seed=seed,
  buffer_size=shuffle_buffer)`` (which also shuffles the order of the files), so at most about
  ``shuffle_buffer`` rows more than needed are read; ``shuffle_buffer=0`` takes the stream in order.

Text is packed: each document is tokenised without special tokens, followed by ``eos`` when the
tokenizer has one, the documents are concatenated and the stream is cut into consecutive
non-overlapping ``seq_len`` windows; the first ``num_samples`` windows are the calibration set.
Empty / whitespace-only documents are skipped. A source with fewer windows (images) than
``num_samples`` gives a warning and all it has.

Sources taken as they are by peers (GPTQConfig, AutoRound): a list of strings (each a document), a path
(a text/json/csv/parquet file, a folder of such files or of images, a ``save_to_disk`` folder), a
``datasets`` object, or a ``CalibrationSpec`` whose ``dataset`` is such an object. ``calibration_record``
is what a checkpoint's ``config.json`` keeps of any of them: JSON, no absolute local path.

The rooms: `spec` (what data: the spec and its sources), `sources` (opening a dataset, reading its rows
in seeded order), `text` and `images` (rows into batches), `load` (`load_calibration`, joining them) and
`record` (identity, config record, log line).
"""

from .images import ProcessorTransform, image_transform_for, is_timm_model
from .load import load_calibration
from .record import calibration_identity, calibration_record, describe_batches
from .spec import (
    IMAGE_EXTENSIONS,
    RECORD_KEYS,
    TEXT_BUILDERS,
    CalibrationSet,
    CalibrationSpec,
    is_dataset_object,
    is_text_list,
    spec_from_string,
)
from .text import tokenizer_for

__all__ = [
    "IMAGE_EXTENSIONS",
    "RECORD_KEYS",
    "TEXT_BUILDERS",
    "CalibrationSet",
    "CalibrationSpec",
    "ProcessorTransform",
    "calibration_identity",
    "calibration_record",
    "describe_batches",
    "image_transform_for",
    "is_dataset_object",
    "is_text_list",
    "is_timm_model",
    "load_calibration",
    "spec_from_string",
    "tokenizer_for",
]
