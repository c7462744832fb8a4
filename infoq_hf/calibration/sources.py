"""Opening a spec's dataset (Hub, local files, a `save_to_disk` folder, an object) and reading its rows.

Rows come in a seeded order and lazily: map-style datasets are read in ``dataset.shuffle(seed=seed)``
order, streams through ``stream.shuffle(seed=seed, buffer_size=shuffle_buffer)`` (which also shuffles the
order of the files; ``shuffle_buffer=0`` takes the stream in order), so a big dataset is read only as far
as the calibration set needs. Ready batches (an iterable of them) are taken as they are."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from .spec import CalibrationSpec, is_dataset_object, is_saved_to_disk

_LOCAL_BUILDERS = ("text", "json", "csv", "parquet", "imagefolder")


def ready_batches(source: Any) -> list:
    """An iterable of ready batches as a non-empty list; ValueError naming what to pass otherwise."""
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


def open_dataset(spec: CalibrationSpec) -> Any:
    """The dataset a spec names (its object, a save_to_disk folder, local files or the Hub), one split."""
    import datasets

    if is_dataset_object(spec.dataset):
        ds = spec.dataset
        return ds.to_iterable_dataset() if spec.streaming and isinstance(ds, datasets.Dataset) else ds
    if not spec.dataset:
        raise ValueError(
            "CalibrationSpec.dataset is not set; name a hub dataset, or a local builder "
            f"({', '.join(map(repr, _LOCAL_BUILDERS))}) with data_files=..."
        )
    if is_saved_to_disk(spec.dataset):
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


def dataset_columns(ds: Any) -> tuple[list[str], list[str]]:
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


def missing_column_error(option: str, name: str, columns: list[str], hint: str = "") -> ValueError:
    """The error for a column option naming no column of the dataset, listing the columns there are."""
    return ValueError(
        f"{option}={name!r} is not a column of this dataset{hint}; its columns are {columns}. "
        f"Set {option}= to one of them."
    )


def seeded_rows(ds: Any, spec: CalibrationSpec, columns: list[str], chunk: int) -> Iterable[dict[str, list]]:
    """Chunks of rows (column -> list of values) in the seeded order, reading lazily."""
    import datasets

    ds = ds.select_columns(columns)  # never decode columns we do not use (e.g. images next to text)
    if isinstance(ds, datasets.IterableDataset):
        if spec.shuffle_buffer:
            ds = ds.shuffle(seed=spec.seed, buffer_size=spec.shuffle_buffer)
    else:
        ds = ds.shuffle(seed=spec.seed, keep_in_memory=True)  # in memory: no indices cache file on disk
    return ds.iter(batch_size=chunk)
