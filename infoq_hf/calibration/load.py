"""`load_calibration`: any calibration source (spec, path, Hub name, datasets object, list of texts, ready
batches) into a list of batches, with the tokenizer or image transform derived from the model when not
given."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from .images import image_batches, image_transform_for, is_vision_model
from .sources import dataset_columns, missing_column_error, open_dataset, ready_batches
from .spec import CalibrationSet, CalibrationSpec, as_spec, is_text_list, spec_for_dataset_object
from .text import text_batches, tokenizer_for


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
        return ready_batches(source)  # ready batches need no datasets import (it is slow, and absent on some hosts)
    import datasets

    if isinstance(source, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise ValueError(
            f"got a dataset dict with splits {list(source)}; pass one split, "
            f"e.g. dataset[{next(iter(source), 'train')!r}]"
        )
    if is_text_list(source):  # documents, packed like any text dataset
        source = datasets.Dataset.from_dict({"text": list(source)})
    if isinstance(source, (datasets.Dataset, datasets.IterableDataset)):
        spec = spec_for_dataset_object(source, options)
        ds = source
    elif isinstance(source, (CalibrationSpec, Mapping, str, os.PathLike)):
        spec = as_spec(source, options)
        ds = open_dataset(spec)
    else:
        raise ValueError(
            f"cannot calibrate on a {type(source).__name__} from the datasets package; pass a "
            "Dataset or IterableDataset"
        )

    columns, image_columns = dataset_columns(ds)
    if spec.label_column is not None and spec.label_column not in columns:
        raise missing_column_error("label_column", spec.label_column, columns)

    if tokenizer is not None and image_transform is not None:
        raise ValueError(
            "pass either a tokenizer (text) or an image_transform (images), not both; "
            "for multimodal models build the batches yourself and pass them as a list"
        )
    if tokenizer is None and image_transform is None and model is not None and is_vision_model(model):
        image_transform = image_transform_for(model)

    if image_transform is not None:
        if spec.image_column not in columns:
            hint = "" if spec.text_column not in columns else " (this dataset holds text; pass a tokenizer instead)"
            raise missing_column_error("image_column", spec.image_column, columns, hint)
        batches = image_batches(ds, spec, image_transform, format)
    else:
        if spec.text_column not in columns:
            if spec.image_column in columns or image_columns:
                raise ValueError(
                    f"this dataset holds images (column(s) {image_columns or [spec.image_column]}) and no text "
                    f"column {spec.text_column!r}; pass an image_transform (e.g. image_transform_for(model)) / "
                    "use a vision model"
                )
            raise missing_column_error("text_column", spec.text_column, columns)
        if tokenizer is None:
            tokenizer = tokenizer_for(model)
        batches = text_batches(ds, spec, tokenizer, format, lm_labels)
    return CalibrationSet(batches, spec)
