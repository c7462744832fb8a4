"""The files beside a checkpoint's card: the card itself (README.md, or INFOQ_CARD.md beside a README of the
user's), the PNG plots it shows, and the table of the folder's files with their sizes and roles."""

from __future__ import annotations

import os
from pathlib import Path

from ..checkpoint import INFOQ_CONFIG_NAME, WEIGHTS_NAME
from ..checkpoint_info import SUMMARY_FILE, TABLE_FILE, CheckpointInfo
from ..origin import CARD_FILE
from ..plots import plot_bits_per_layer, plot_pareto_curve, plot_sensitivity_heatmap
from .context import TAGS, card_context
from .render import check_model_card, render_model_card

CARD_FILE_BESIDE_USERS = "INFOQ_CARD.md"  # where the card goes when the folder holds a README.md of the user's
PLOT_FILES = {
    "bits": "infoq_bits_per_layer.png",
    "heatmap": "infoq_sensitivity_heatmap.png",
    "pareto": "infoq_pareto.png",
}


FILE_ROLES = {
    "config.json": "model config; `quantization_config` holds the per-layer bits",
    INFOQ_CONFIG_NAME: "InfoQ settings and per-layer bits (for `infoq_hf.load_quantized`)",
    "generation_config.json": "generation defaults",
    TABLE_FILE: "sensitivity table the bits were allocated from",
    SUMMARY_FILE: "quantization summary (sizes, times, what was measured)",
    "tokenizer.json": "tokenizer",
    "tokenizer_config.json": "tokenizer settings",
    "special_tokens_map.json": "tokenizer special tokens",
    "chat_template.jinja": "chat template",
}


def _file_role(name: str) -> str:
    if name.endswith(".safetensors"):
        return "packed integer codes, scales and zero points, and the float tensors of unquantized layers"
    if name.endswith(".safetensors.index.json"):
        return "which shard holds which tensor"
    if name.endswith(".png"):
        return "plot shown in this card"
    return FILE_ROLES.get(name, "")


def checkpoint_files(directory: str | os.PathLike) -> list[dict]:
    """The files of a checkpoint folder (README.md and hidden entries aside), each with its size and role."""
    rows = []
    for path in sorted(Path(directory).iterdir()):
        if path.name == CARD_FILE or path.name.startswith(".") or not path.is_file() or path.is_symlink():
            continue
        rows.append({"name": path.name, "size": _size_text(path.stat().st_size), "role": _file_role(path.name)})
    return rows


def _size_text(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def write_plots(directory: str | os.PathLike, info: CheckpointInfo) -> dict[str, str]:
    """Write the PNG plots for `info` into `directory`; returns {kind: file name}. Needs the table for the
    heatmap and the Pareto curve."""
    directory = Path(directory)
    written = {"bits": plot_bits_per_layer(info.policy, directory / PLOT_FILES["bits"], params=info.params).name}
    if info.table is not None:
        written["heatmap"] = plot_sensitivity_heatmap(info.table, directory / PLOT_FILES["heatmap"], info.policy).name
        kwargs = {
            "solver": info.config.get("solver", "auto"),
            "pin_first_last": info.config.get("pin_first_last", "auto"),
        }
        try:
            written["pareto"] = plot_pareto_curve(
                info.table, directory / PLOT_FILES["pareto"], info.policy, **kwargs
            ).name
        except ValueError:  # e.g. every budget pinned infeasible: the card simply has no curve
            pass
    return written


def write_model_card(
    directory: str | os.PathLike,
    info: CheckpointInfo,
    repo_id: str,
    *,
    base_model=None,
    calibration=None,
    template=None,
    tags: list[str] | None = None,
    card_file: str = CARD_FILE,
) -> str:
    """Plots + the card (`card_file`, see `card_file_for`) into `directory` (a checkpoint folder); returns the
    card text. `repo_id`: the Hub id the card's snippet loads from, or the local folder as the user would
    name it."""
    directory = Path(directory)
    plots = write_plots(directory, info)
    weights = directory / WEIGHTS_NAME
    context = card_context(
        info,
        repo_id,
        base_model=base_model,
        calibration=calibration,
        plots=plots,
        weights_bytes=weights.stat().st_size if weights.is_file() else None,
        tags=tags,
        files=checkpoint_files(directory),
    )
    text = render_model_card(context, template)
    expected = {
        k: context["metadata"][k]
        for k in ("base_model", "base_model_relation", "library_name", "license", "pipeline_tag", "tags")
        if k in context["metadata"]
    }
    check_model_card(text, expected)
    (directory / card_file).write_text(text)
    return text


def card_file_for(folder: str | os.PathLike) -> str:
    """README.md, unless `folder` already holds a README.md that is not an InfoQ card: that one is the user's
    and is kept, and the card goes to INFOQ_CARD.md beside it."""
    from huggingface_hub import ModelCard

    existing = Path(folder) / CARD_FILE
    if not existing.is_file():
        return CARD_FILE
    try:
        tags = ModelCard(existing.read_text(errors="replace")).data.to_dict().get("tags") or []
    except Exception:  # not a card at all: the user's file
        tags = []
    return CARD_FILE if TAGS[0] in tags else CARD_FILE_BESIDE_USERS
