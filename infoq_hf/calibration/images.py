"""Images into batches: a model's evaluation transform (timm or a transformers image processor) applied
to the images of a dataset, stacked into ``pixel_values`` batches with optional integer labels."""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import torch

from .sources import seeded_rows
from .spec import CalibrationSpec


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


def is_vision_model(model: Any) -> bool:
    """Whether `model` takes images: a timm model, or a transformers model whose main input is pixel_values."""
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


def image_batches(ds: Any, spec: CalibrationSpec, transform: Callable, format: str) -> list:
    """The first ``num_samples`` usable images of `ds` (seeded order), transformed and stacked into batches."""
    columns = [spec.image_column] + ([spec.label_column] if spec.label_column else [])
    xs: list[torch.Tensor] = []
    ys: list[Any] = []
    seen = 0
    for chunk in seeded_rows(ds, spec, columns, spec.batch_size):
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
