"""The model card of a packed checkpoint: its context, its template, the files written beside it.

`write_model_card(folder, read_checkpoint(folder), repo_id)` writes `README.md`, rendered from the one
template `templates/model_card.md.j2` (package data), and the PNG plots it shows. The card's YAML
metadata is built in Python (`card_context`) so the Hub understands it (base_model, base_model_relation:
quantized, library_name, license, pipeline_tag, tags, and a `quantization` block with the policy summary),
and `check_model_card` reads it back through `huggingface_hub.ModelCard`. The card is written by the
library's own save and push (`infoq_hf.save`, `infoq_hf.push_to_hub`, the `infoq` CLI), never by
transformers' `save_pretrained` / `push_to_hub`.

The rooms: `context` (what the card says) with `snippets` (the code it shows), `render` (the template and
the Hub card check) and `files` (the card, plots and file table written into the folder).
"""

from ..origin import CARD_FILE, base_card_metadata, float_model_origin, is_repo_id
from .context import PIPELINE_TAGS, TAGS, card_context
from .files import (
    CARD_FILE_BESIDE_USERS,
    FILE_ROLES,
    PLOT_FILES,
    card_file_for,
    checkpoint_files,
    write_model_card,
    write_plots,
)
from .render import TEMPLATE_PATH, ModelCardError, check_model_card, render_model_card

__all__ = [
    "CARD_FILE",
    "CARD_FILE_BESIDE_USERS",
    "card_file_for",
    "PLOT_FILES",
    "TEMPLATE_PATH",
    "ModelCardError",
    "base_card_metadata",
    "card_context",
    "check_model_card",
    "checkpoint_files",
    "float_model_origin",
    "is_repo_id",
    "render_model_card",
    "write_model_card",
    "write_plots",
    "FILE_ROLES",
    "PIPELINE_TAGS",
    "TAGS",
]
