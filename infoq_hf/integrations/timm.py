"""Packed checkpoints for timm (and any `nn.Module`) without transformers' model classes.

`save_quantized(model, dir, policy)` writes model.safetensors + infoq_config.json and, for a
timm model, timm's own config.json (architecture, model_args, pretrained_cfg) with the infoq
`quantization_config` added, so `load_quantized(dir)` can rebuild it:
`timm.create_model(architecture, pretrained=False, **model_args)` -> packed layers from the
policy -> strict state-dict load. Any other module is loaded into a float model you pass.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch.nn as nn

from ..calibration import is_timm_model
from ..checkpoint import (
    atomic_checkpoint,
    load_packed_into,
    packed_settings,
    policy_of,
    read_infoq_config,
    write_packed,
)
from ..config import InfoQConfig
from ..policy import BitPolicy
from ..quant.apply import set_compute_dtype


def save_quantized(
    model: nn.Module,
    directory: str | os.PathLike,
    policy: BitPolicy | Mapping | None = None,
    *,
    extra_config: Mapping | None = None,
    config: InfoQConfig | None = None,
) -> Path:
    """Atomically save a packed model: it is written in a temporary sibling folder and renamed.

    `policy` (default: read from the packed layers) must be the one the model was packed with.
    `extra_config` is merged into timm's config.json (e.g. `{"model_args": {...}}`, `label_names`);
    `config`, the InfoQConfig used, is recorded (its search settings) beside the policy."""
    with atomic_checkpoint(directory) as staging:
        write_quantized(model, staging, policy, extra_config=extra_config, config=config)
    return Path(directory)


def write_quantized(
    model: nn.Module,
    folder: Path,
    policy: BitPolicy | Mapping | None = None,
    *,
    extra_config: Mapping | None = None,
    config: InfoQConfig | None = None,
) -> None:
    """`save_quantized`'s files, written straight into `folder` (a staging folder the caller's transaction owns)."""
    actual = policy_of(model)
    if policy is not None:
        policy = policy if isinstance(policy, BitPolicy) else BitPolicy.from_dict(policy)
        resolved = policy.resolve(actual)
        wrong = {n: (lb.w_bits, actual[n].w_bits) for n, lb in resolved.items() if lb != actual[n]}
        if wrong or len(resolved) != len(actual):
            raise ValueError(
                f"the policy does not describe the packed model (layers (policy bits, packed bits): "
                f"{dict(list(wrong.items())[:5])}, {len(resolved)} policy layers vs {len(actual)} packed); "
                "pass the policy the model was quantized with, or policy=None to take it from the model"
            )
    settings = dict(config.to_dict() if config is not None else {}, **packed_settings(model), policy=actual.to_dict())
    if config is None:
        settings["budget"] = None
    infoq_config = InfoQConfig.from_dict(settings)

    def write_model_config(tmp: Path) -> None:
        extra = dict(extra_config or {})
        if is_timm_model(model):
            from timm.models._hub import save_config_for_hf

            extra["quantization_config"] = infoq_config.to_dict()
            save_config_for_hf(model, str(tmp / "config.json"), model_config=extra)
        elif extra:
            (tmp / "config.json").write_text(
                json.dumps({**extra, "quantization_config": infoq_config.to_dict()}, indent=1)
            )

    write_packed(model, Path(folder), infoq_config, write_extra=write_model_config)


def load_quantized(directory: str | os.PathLike, model: nn.Module | None = None, **create_kwargs) -> nn.Module:
    """Load a packed checkpoint written by `save_quantized`.

    Without `model`, the directory's timm config.json recreates the architecture; pass `model`
    (a float instance of the same architecture) for other modules. Returns the model in eval mode."""
    directory = Path(directory)
    config = read_infoq_config(directory)
    if model is None:
        model = create_timm_model(directory, **create_kwargs)
    load_packed_into(model, directory, config)
    set_compute_dtype(model, config.compute_dtype)
    return model.eval()


def create_timm_model(directory: Path, **create_kwargs) -> nn.Module:
    """The float timm model (no weights) of the architecture a checkpoint folder's config.json names."""
    if not (directory / "config.json").is_file():
        raise ValueError(
            f"{directory} has no config.json naming a timm architecture; pass load_quantized(dir, model=...) "
            "with a float instance of the model"
        )
    try:
        import timm
        from timm.models._hub import load_model_config_from_path
    except ImportError:
        raise ImportError("loading a timm checkpoint needs timm: pip install timm") from None
    pretrained_cfg, architecture, model_args = load_model_config_from_path(directory)
    kwargs = {**(model_args or {}), **create_kwargs}
    return timm.create_model(architecture, pretrained=False, pretrained_cfg=pretrained_cfg, **kwargs)
