"""What calibration data to use: a `CalibrationSpec` (JSON-able, kept in a quantization config), built
from a path, a datasets Hub name, a dict of its fields or a datasets object, and the list of batches
(`CalibrationSet`) that remembers the spec it came from."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

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
        if is_saved_to_disk(str(path)):
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


def as_spec(source: Any, options: Mapping[str, Any]) -> CalibrationSpec:
    """A spec from a spec, a dict of its fields, or a path / Hub name, with `options` applied."""
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


def spec_for_dataset_object(ds: Any, options: Mapping[str, Any]) -> CalibrationSpec:
    """A spec holding a datasets object and what the object knows of its origin (for calibration_identity);
    the user's `options` win."""
    import datasets

    known: dict[str, Any] = {
        "dataset": ds,
        "config": getattr(ds.info, "config_name", None),
        "streaming": isinstance(ds, datasets.IterableDataset),
    }
    if ds.split is not None:
        known["split"] = str(ds.split)
    return CalibrationSpec.from_dict({**known, **options})


def is_saved_to_disk(path: str) -> bool:
    """Whether `path` is a folder written by datasets' ``save_to_disk``."""
    return os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, marker)) for marker in ("state.json", "dataset_dict.json")
    )


def _paths_to_str(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [_paths_to_str(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _paths_to_str(v) for k, v in value.items()}
    return value
