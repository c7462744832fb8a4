"""Where a quantized model came from: the float model's Hub id, name, license and pipeline tag, read from
the id or folder it was loaded from (its config.json and model card), for the checkpoint's metadata."""

from __future__ import annotations

import os
import re
from pathlib import Path

from .checkpoint import read_json

CARD_FILE = "README.md"
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # user-or-org/name


def is_repo_id(value) -> bool:
    """Whether `value` reads as a Hub model id (user-or-org/name) and is not a local path."""
    return isinstance(value, str) and bool(REPO_ID.match(value)) and not os.path.exists(value)


def base_card_metadata(source) -> dict:
    """`license` and `pipeline_tag` of the float model's own card: the README.md of a local model folder,
    or of a Hub model id (the model was just loaded from there). {} when there is none or it cannot be read."""
    from huggingface_hub import ModelCard

    try:
        if isinstance(source, (str, os.PathLike)) and (Path(source) / CARD_FILE).is_file():
            data = ModelCard((Path(source) / CARD_FILE).read_text()).data.to_dict()
        elif is_repo_id(source):
            data = ModelCard.load(source).data.to_dict()
        else:
            return {}
    except Exception:  # noqa: BLE001 - a base card that is missing, unreachable or unparsable adds nothing
        return {}
    return {k: data[k] for k in ("license", "pipeline_tag") if isinstance(data.get(k), str)}


def float_model_origin(model, source: str | None, *, read_card: bool = True) -> dict:
    """What is known of the float model `model` was quantized from: its Hub id (`base_model`: the id it was
    loaded from, or the `_name_or_path` its local folder's config.json names), its name, and the license and
    pipeline_tag of its card (`read_card`; or its config, or timm's `pretrained_cfg`)."""
    origin: dict = {}
    pretrained_cfg = getattr(model, "pretrained_cfg", None) or {}
    if source and is_repo_id(source):
        origin["base_model"] = source
    elif source and (Path(source) / "config.json").is_file():
        try:
            named = read_json(Path(source) / "config.json").get("_name_or_path")
        except ValueError:
            named = None
        if is_repo_id(named):
            origin["base_model"] = named
    name = origin.get("base_model") or source or pretrained_cfg.get("architecture")
    if name:
        origin["model_name"] = str(name).rstrip("/").split("/")[-1]
    if source and read_card:
        origin.update(base_card_metadata(source))
    license_ = getattr(getattr(model, "config", None), "license", None) or pretrained_cfg.get("license")
    if isinstance(license_, str):
        origin.setdefault("license", license_)
    return origin
