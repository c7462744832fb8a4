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
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CalibrationSet",
    "CalibrationSpec",
    "ProcessorTransform",
    "calibration_identity",
    "calibration_record",
    "describe_batches",
    "image_transform_for",
    "is_dataset_object",
    "is_text_list",
    "load_calibration",
    "spec_from_string",
]

_LOCAL_BUILDERS = ("text", "json", "csv", "parquet", "imagefolder")
_READ_CHUNK = 64  # rows tokenised per call: batched tokenisation is much faster than row by row
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff")
TEXT_BUILDERS = {
    ".txt": "text",
    ".text": "text",
    ".md": "text",
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".parquet": "parquet",
}
RECORD_KEYS = ("source", "sha256")  # keys a calibration record adds to the spec's fields


@dataclasses.dataclass
class CalibrationSpec:
    """Where the calibration data comes from and how much of it to take (JSON-able, see ``to_dict``)."""

    dataset: Any = None  # hub name, a local builder ("text", "json", ...), a save_to_disk folder, or a datasets object
    data_files: str | list[str] | dict[str, str | list[str]] | None = None
    data_dir: str | None = None
    config: str | None = None  # the dataset's config (subset) name
    split: str = "train"
    streaming: bool = False
    text_column: str = "text"
    image_column: str = "image"
    label_column: str | None = None
    num_samples: int = 128
    seq_len: int = 512  # text only
    batch_size: int = 8
    seed: int = 0
    shuffle_buffer: int = 1000  # streams only; 0 = take the stream in order

    def __post_init__(self) -> None:
        # Paths are stored as strings so the spec stays JSON-able inside a quantization config.
        self.data_files = _paths_to_str(self.data_files)
        if isinstance(self.data_dir, os.PathLike):
            self.data_dir = os.fspath(self.data_dir)
        if isinstance(self.dataset, os.PathLike):
            self.dataset = os.fspath(self.dataset)
        if not (self.dataset is None or isinstance(self.dataset, str) or is_dataset_object(self.dataset)):
            raise ValueError(
                "CalibrationSpec.dataset must be a dataset name, a local builder or folder, or a datasets "
                f"Dataset / IterableDataset, got {type(self.dataset).__name__}"
            )
        for name in ("num_samples", "seq_len", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"CalibrationSpec.{name} must be a positive integer, got {value!r}")
        if not isinstance(self.shuffle_buffer, int) or self.shuffle_buffer < 0:
            raise ValueError(f"CalibrationSpec.shuffle_buffer must be an integer >= 0, got {self.shuffle_buffer!r}")

    def to_dict(self) -> dict[str, Any]:
        """A deep, JSON-clean copy; a datasets object is replaced by its name (see calibration_record)."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if is_dataset_object(self.dataset):
            fields["dataset"] = _dataset_object_name(self.dataset)
        return json.loads(json.dumps(fields))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CalibrationSpec:
        _check_option_names(data)
        return cls(**data)

    def with_options(self, **options: Any) -> CalibrationSpec:
        """A copy with some fields changed (a datasets object in ``dataset`` is kept, not copied)."""
        _check_option_names(options)
        return dataclasses.replace(self, **options)


def _check_option_names(names: Iterable[str]) -> None:
    known = {f.name for f in dataclasses.fields(CalibrationSpec)}
    unknown = sorted(set(names) - known)
    if unknown:
        raise ValueError(f"unknown calibration option(s) {unknown}; the known options are {sorted(known)}")


def is_dataset_object(value: Any) -> bool:
    try:
        import datasets
    except ImportError:
        return False
    return isinstance(value, (datasets.Dataset, datasets.IterableDataset))


def _dataset_object_name(ds: Any) -> str | None:
    return getattr(ds.info, "dataset_name", None) or getattr(ds.info, "builder_name", None)


def is_text_list(value: Any) -> bool:
    """A non-empty list/tuple of strings: documents to calibrate on (GPTQConfig's and AutoRound's form)."""
    return isinstance(value, (list, tuple)) and bool(value) and all(isinstance(v, str) for v in value)


def spec_from_string(source: str | os.PathLike, **options: Any) -> CalibrationSpec:
    """A spec for a local path or a datasets Hub name: a .txt/.json(l)/.csv/.parquet file, a folder of such
    files or of images (an imagefolder: class subfolders give labels), a ``save_to_disk`` folder, else a
    Hub dataset name."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_file():
        builder = TEXT_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(
                f"calibration file {text}: unknown file type {path.suffix!r}; use {', '.join(sorted(TEXT_BUILDERS))}"
            )
        return CalibrationSpec.from_dict({"dataset": builder, "data_files": str(path.resolve()), **options})
    if path.is_dir():
        if _is_saved_to_disk(str(path)):
            return CalibrationSpec.from_dict({"dataset": str(path.resolve()), **options})
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        if any(p.suffix.lower() in IMAGE_EXTENSIONS for p in files):
            return CalibrationSpec.from_dict({"dataset": "imagefolder", "data_dir": str(path.resolve()), **options})
        builders = {TEXT_BUILDERS[p.suffix.lower()] for p in files if p.suffix.lower() in TEXT_BUILDERS}
        if len(builders) != 1:
            raise ValueError(
                f"calibration folder {text} must hold images or one kind of .txt/.json/.csv/.parquet "
                f"files, found {sorted(builders) or 'none'}"
            )
        builder = builders.pop()
        data_files = [str(p.resolve()) for p in files if TEXT_BUILDERS.get(p.suffix.lower()) == builder]
        return CalibrationSpec.from_dict({"dataset": builder, "data_files": data_files, **options})
    looks_like_path = text.startswith((".", "/", "~")) or text.count("/") > 1 or path.suffix.lower() in TEXT_BUILDERS
    if looks_like_path:  # Hub dataset names are "name" or "owner/name"
        raise ValueError(f"calibration {text}: no such file or folder")
    return CalibrationSpec.from_dict({"dataset": text, **options})


class CalibrationSet(list):
    """A list of batches that remembers the spec it was built from (for ``calibration_identity``)."""

    def __init__(self, batches: Iterable = (), spec: CalibrationSpec | None = None):
        super().__init__(batches)
        self.spec = spec


# --------------------------------------------------------------------------- loading


def load_calibration(
    source: Any,
    *,
    tokenizer: Any = None,
    image_transform: Callable | None = None,
    model: Any = None,
    format: str = "dict",
    lm_labels: bool = False,
    **options: Any,
) -> list:
    """Build the calibration batches.

    ``source``: a ``CalibrationSpec``, a dict of its fields, a path or dataset name (str, see
    ``spec_from_string``), a ``datasets.Dataset`` / ``IterableDataset``, a list of strings (documents),
    or an iterable of ready batches (returned as a list, unchanged). ``options`` override spec fields
    (``num_samples=``, ``seq_len=``, ``seed=``, ...), which is how they are given for a dataset object.

    Text needs ``tokenizer``; images need ``image_transform`` (see ``image_transform_for``). With
    ``model`` alone, the transform (timm or a vision transformers model) or the tokenizer (a
    transformers text model whose tokenizer is saved locally) is derived from it.
    """
    if format not in ("dict", "tuple"):
        raise ValueError(f"format must be 'dict' or 'tuple', got {format!r}")
    from_datasets = type(source).__module__.split(".")[0] == "datasets"
    if not (from_datasets or is_text_list(source) or isinstance(source, (CalibrationSpec, Mapping, str, os.PathLike))):
        if options:
            raise ValueError(f"options {sorted(options)} apply to datasets, not to ready batches")
        return _ready_batches(source)  # ready batches need no datasets import (it is slow, and absent on some hosts)
    import datasets

    if isinstance(source, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise ValueError(
            f"got a dataset dict with splits {list(source)}; pass one split, "
            f"e.g. dataset[{next(iter(source), 'train')!r}]"
        )
    if is_text_list(source):  # documents, packed like any text dataset
        source = datasets.Dataset.from_dict({"text": list(source)})
    if isinstance(source, (datasets.Dataset, datasets.IterableDataset)):
        spec = _spec_for_dataset_object(source, options)
        ds = source
    elif isinstance(source, (CalibrationSpec, Mapping, str, os.PathLike)):
        spec = _as_spec(source, options)
        ds = _load_dataset(spec)
    else:
        raise ValueError(
            f"cannot calibrate on a {type(source).__name__} from the datasets package; pass a "
            "Dataset or IterableDataset"
        )

    columns, image_columns = _inspect_columns(ds)
    if spec.label_column is not None and spec.label_column not in columns:
        raise _missing_column("label_column", spec.label_column, columns)

    if tokenizer is not None and image_transform is not None:
        raise ValueError(
            "pass either a tokenizer (text) or an image_transform (images), not both; "
            "for multimodal models build the batches yourself and pass them as a list"
        )
    if tokenizer is None and image_transform is None and model is not None and _is_vision_model(model):
        image_transform = image_transform_for(model)

    if image_transform is not None:
        if spec.image_column not in columns:
            hint = "" if spec.text_column not in columns else " (this dataset holds text; pass a tokenizer instead)"
            raise _missing_column("image_column", spec.image_column, columns, hint)
        batches = _image_batches(ds, spec, image_transform, format)
    else:
        if spec.text_column not in columns:
            if spec.image_column in columns or image_columns:
                raise ValueError(
                    f"this dataset holds images (column(s) {image_columns or [spec.image_column]}) and no text "
                    f"column {spec.text_column!r}; pass an image_transform (e.g. image_transform_for(model)) / "
                    "use a vision model"
                )
            raise _missing_column("text_column", spec.text_column, columns)
        if tokenizer is None:
            tokenizer = tokenizer_for(model)
        batches = _text_batches(ds, spec, tokenizer, format, lm_labels)
    return CalibrationSet(batches, spec)


def _as_spec(source: Any, options: Mapping[str, Any]) -> CalibrationSpec:
    if isinstance(source, CalibrationSpec):
        spec = source
    elif isinstance(source, Mapping):
        if any(isinstance(v, torch.Tensor) for v in source.values()):
            raise ValueError("got a single batch (a dict of tensors); pass a list of batches")
        if any(k in source for k in RECORD_KEYS):
            raise ValueError(
                f"this calibration is a record of what a checkpoint was made from ({source.get('source')}), not "
                "data that can be loaded again; pass the texts, dataset or batches themselves"
            )
        spec = CalibrationSpec.from_dict(source)
    else:
        spec = spec_from_string(source)
    return spec.with_options(**options) if options else spec


def _spec_for_dataset_object(ds: Any, options: Mapping[str, Any]) -> CalibrationSpec:
    # Record what the object knows about its origin, for calibration_identity; the user's options win.
    import datasets

    known: dict[str, Any] = {
        "dataset": ds,
        "config": getattr(ds.info, "config_name", None),
        "streaming": isinstance(ds, datasets.IterableDataset),
    }
    if ds.split is not None:
        known["split"] = str(ds.split)
    return CalibrationSpec.from_dict({**known, **options})


def _ready_batches(source: Any) -> list:
    if isinstance(source, (str, bytes, torch.Tensor)):
        raise ValueError(f"expected an iterable of batches, got a {type(source).__name__}")
    try:
        batches = source if isinstance(source, list) else list(source)
    except TypeError:
        raise ValueError(
            f"cannot use a {type(source).__name__} as calibration: pass a CalibrationSpec, a dict, a dataset "
            "name, a datasets.Dataset / IterableDataset, or an iterable of batches"
        ) from None
    if not batches:
        raise ValueError("the calibration iterable yielded no batches; pass at least one batch")
    return batches


def _hub_errors() -> tuple[type[BaseException], ...]:
    # datasets reports an unreachable hub as a builtin ConnectionError (OfflineModeIsEnabled is one too);
    # a missing local cache entry surfaces as LocalEntryNotFoundError.
    errors: list[type[BaseException]] = [ConnectionError]
    try:
        from huggingface_hub.errors import LocalEntryNotFoundError

        errors.append(LocalEntryNotFoundError)
    except ImportError:
        pass
    return tuple(errors)


def _load_dataset(spec: CalibrationSpec) -> Any:
    import datasets

    if is_dataset_object(spec.dataset):
        ds = spec.dataset
        return ds.to_iterable_dataset() if spec.streaming and isinstance(ds, datasets.Dataset) else ds
    if not spec.dataset:
        raise ValueError(
            "CalibrationSpec.dataset is not set; name a hub dataset, or a local builder "
            f"({', '.join(map(repr, _LOCAL_BUILDERS))}) with data_files=..."
        )
    if _is_saved_to_disk(spec.dataset):
        ds = datasets.load_from_disk(spec.dataset)
        if isinstance(ds, datasets.DatasetDict):
            ds = ds[spec.split]
        return ds.to_iterable_dataset() if spec.streaming else ds
    try:
        return datasets.load_dataset(
            spec.dataset,
            spec.config,
            data_files=spec.data_files,
            data_dir=spec.data_dir,
            split=spec.split,
            streaming=spec.streaming,
        )
    except _hub_errors() as e:
        raise ValueError(
            f"could not load dataset {spec.dataset!r}: the hub is unreachable ({e}); use local files with "
            f'dataset="text"/"json"/"csv"/"parquet"/"imagefolder" and data_files=... (or data_dir=...). '
            "Setting HF_HUB_OFFLINE=1 makes this fail at once instead of after retries."
        ) from e


def _is_saved_to_disk(path: str) -> bool:
    return os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, marker)) for marker in ("state.json", "dataset_dict.json")
    )


def _inspect_columns(ds: Any) -> tuple[list[str], list[str]]:
    """Column names and the columns that hold images; streams without features are peeked at."""
    import datasets
    from PIL import Image

    if ds.features is not None:
        images = [name for name, feature in ds.features.items() if isinstance(feature, datasets.Image)]
        return list(ds.features), images
    first = next(iter(ds), None)
    if first is None:
        raise ValueError("the dataset is empty; check split= and data_files=")
    return list(first), [name for name, value in first.items() if isinstance(value, Image.Image)]


def _missing_column(option: str, name: str, columns: list[str], hint: str = "") -> ValueError:
    return ValueError(
        f"{option}={name!r} is not a column of this dataset{hint}; its columns are {columns}. "
        f"Set {option}= to one of them."
    )


def _rows(ds: Any, spec: CalibrationSpec, columns: list[str], chunk: int) -> Iterable[dict[str, list]]:
    """Chunks of rows (column -> list of values) in the seeded order, reading lazily."""
    import datasets

    ds = ds.select_columns(columns)  # never decode columns we do not use (e.g. images next to text)
    if isinstance(ds, datasets.IterableDataset):
        if spec.shuffle_buffer:
            ds = ds.shuffle(seed=spec.seed, buffer_size=spec.shuffle_buffer)
    else:
        ds = ds.shuffle(seed=spec.seed, keep_in_memory=True)  # in memory: no indices cache file on disk
    return ds.iter(batch_size=chunk)


# --------------------------------------------------------------------------- text


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


def _text_batches(ds: Any, spec: CalibrationSpec, tokenizer: Any, format: str, lm_labels: bool) -> list:
    needed = spec.num_samples * spec.seq_len
    eos = getattr(tokenizer, "eos_token_id", None)
    stream: list[int] = []
    documents = 0
    for chunk in _rows(ds, spec, [spec.text_column], _READ_CHUNK):
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


# --------------------------------------------------------------------------- images


class ProcessorTransform:
    """A transformers image processor as a callable ``PIL.Image -> FloatTensor[C, H, W]``."""

    def __init__(self, processor: Any):
        self.processor = processor

    def __call__(self, image: Any) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]

    def __repr__(self) -> str:
        return f"ProcessorTransform({type(self.processor).__name__})"


def is_timm_model(model: Any) -> bool:
    """Whether `model` is a timm model (its class comes from timm and it carries a `pretrained_cfg`)."""
    return type(model).__module__.startswith("timm.") and hasattr(model, "pretrained_cfg")


def _is_vision_model(model: Any) -> bool:
    return is_timm_model(model) or getattr(model, "main_input_name", None) == "pixel_values"


def image_transform_for(model_or_processor: Any) -> Callable[[Any], torch.Tensor]:
    """The evaluation transform ``PIL.Image -> FloatTensor[C, H, W]`` for a model or processor.

    Accepts a timm model (its pretrained_cfg: resize, crop, mean/std), a transformers image processor
    (or a processor holding one), or a transformers model / local path whose image processor is saved
    locally (``name_or_path``).
    """
    obj = model_or_processor
    if is_timm_model(obj):
        import timm.data

        return timm.data.create_transform(**timm.data.resolve_data_config({}, model=obj))

    from transformers import AutoImageProcessor, ProcessorMixin
    from transformers.image_processing_base import ImageProcessingMixin

    if isinstance(obj, ProcessorMixin) and getattr(obj, "image_processor", None) is not None:
        obj = obj.image_processor
    if isinstance(obj, ImageProcessingMixin):
        return ProcessorTransform(obj)

    name = os.fspath(obj) if isinstance(obj, (str, os.PathLike)) else getattr(obj, "name_or_path", None)
    if name:
        try:
            return ProcessorTransform(AutoImageProcessor.from_pretrained(name, local_files_only=True))
        except (OSError, ValueError) as e:
            raise ValueError(
                f"no image processor is saved locally for {name!r} ({e}); pass image_transform= yourself, "
                "or image_transform_for(<an image processor>)"
            ) from e
    raise ValueError(
        f"cannot build an image transform from a {type(model_or_processor).__name__}: expected a timm model, "
        "a transformers image processor, or a transformers model whose image processor is saved locally; "
        "otherwise pass image_transform= (a callable PIL.Image -> tensor [C, H, W])"
    )


def _as_rgb(value: Any, column: str) -> Any:
    from PIL import Image

    if isinstance(value, Image.Image):
        return value if value.mode == "RGB" else value.convert("RGB")
    if hasattr(value, "__array_interface__"):  # numpy arrays from a dataset without an Image feature
        return Image.fromarray(value).convert("RGB")
    raise ValueError(
        f"image_column={column!r} holds {type(value).__name__} values, not images; set image_column= to the "
        "column of images"
    )


def _image_batches(ds: Any, spec: CalibrationSpec, transform: Callable, format: str) -> list:
    columns = [spec.image_column] + ([spec.label_column] if spec.label_column else [])
    xs: list[torch.Tensor] = []
    ys: list[Any] = []
    seen = 0
    for chunk in _rows(ds, spec, columns, spec.batch_size):
        for i, image in enumerate(chunk[spec.image_column]):
            seen += 1
            label = chunk[spec.label_column][i] if spec.label_column else None
            if image is None or (spec.label_column and label is None):
                continue  # not usable: nothing to feed, or nothing to score against
            x = transform(_as_rgb(image, spec.image_column))
            if not isinstance(x, torch.Tensor) or x.dim() != 3:
                raise ValueError(
                    f"image_transform must return a tensor [C, H, W], got "
                    f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}"
                )
            xs.append(x)
            ys.append(label)
            if len(xs) == spec.num_samples:
                break
        if len(xs) == spec.num_samples:
            break
    if len(xs) < spec.num_samples:
        what = (
            f"the dataset yielded only {len(xs)} usable image(s) (of {seen} rows read), fewer than "
            f"num_samples={spec.num_samples}"
        )
        if not xs:
            raise ValueError(f"{what}; check image_column= / label_column=, or use more data")
        warnings.warn(
            f"{what}; calibrating on those {len(xs)}. Set num_samples={len(xs)} (or use more data) to silence this",
            stacklevel=3,
        )

    batches = []
    for start in range(0, len(xs), spec.batch_size):
        x = torch.stack(xs[start : start + spec.batch_size]).float()
        y = _labels_tensor(ys[start : start + spec.batch_size], spec.label_column) if spec.label_column else None
        if format == "tuple":
            batches.append((x, y))
        else:
            batches.append({"pixel_values": x} if y is None else {"pixel_values": x, "labels": y})
    return batches


def _labels_tensor(labels: list, column: str) -> torch.Tensor:
    try:
        return torch.tensor(labels, dtype=torch.long)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(
            f"label_column={column!r} must hold integer class ids, got e.g. {labels[0]!r}; "
            f"convert it with dataset.class_encode_column({column!r})"
        ) from None


# --------------------------------------------------------------------------- identity and logging


def calibration_identity(source: Any, *, spec: CalibrationSpec | None = None) -> dict[str, Any]:
    """A small JSON-able record of which calibration data a result was computed on.

    From a spec (or dict): the request only (``sha256`` is None). From batches: also ``sha256`` over
    every tensor in them (names, dtypes, shapes and bytes, inputs and labels), the actual sample count
    and, for text, the window length. The spec is taken from a ``CalibrationSet`` or ``spec=``.
    """
    batches = None
    if isinstance(source, CalibrationSpec) or (isinstance(source, Mapping) and not _looks_like_batch(source)):
        spec = _as_spec(source, {})
    else:
        batches = _ready_batches(source)
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
        spec = _spec_for_dataset_object(source, {})
    elif isinstance(source, (CalibrationSpec, Mapping, str, os.PathLike)):
        spec = _as_spec(source, {})
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


def _paths_to_str(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_paths_to_str(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _paths_to_str(v) for k, v in value.items()}
    return value
