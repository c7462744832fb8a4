"""Rendering a model card: the packaged Jinja template (strict: an undefined variable is an error naming
the template line) and the check that the rendered card parses as a Hub model card with its metadata."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

TEMPLATE_PATH = Path(__file__).parent.parent / "templates" / "model_card.md.j2"  # package data


class ModelCardError(ValueError):
    """The model card template failed to render, or the rendered card is not valid."""


# ----------------------------------------------------------------------------- rendering
def _template_line(tb, filename: str) -> int | None:
    """The template line an exception was raised at (jinja2 maps its frames to template lines)."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def render_model_card(context: Mapping, template: str | os.PathLike | None = None) -> str:
    """Render the model card template (default: the packaged `templates/model_card.md.j2`).

    Undefined variables are errors; any failure raises `ModelCardError` naming the template file and line."""
    import jinja2

    path = Path(template) if template is not None else TEMPLATE_PATH
    if not path.is_file():
        raise ModelCardError(f"model card template {path} does not exist")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(path.parent)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    try:
        return env.get_template(path.name).render(**context)
    except jinja2.TemplateSyntaxError as e:
        raise ModelCardError(f"model card template {e.filename or path}, line {e.lineno}: {e.message}") from None
    except Exception as e:  # undefined variables, bad filters, ...
        line = _template_line(e.__traceback__, str(path.resolve())) or _template_line(e.__traceback__, str(path))
        where = f", line {line}" if line else ""
        raise ModelCardError(f"model card template {path}{where}: {type(e).__name__}: {e}") from None


def check_model_card(text: str, expected: Mapping | None = None):
    """Parse `text` with `huggingface_hub.ModelCard` and check its metadata survived the YAML round trip."""
    from huggingface_hub import ModelCard

    try:
        card = ModelCard(text)
    except Exception as e:  # yaml errors, a non-dict block, invalid card data
        raise ModelCardError(f"the rendered model card does not parse as a Hub model card: {e}") from None
    data = card.data.to_dict()
    for key, value in (expected or {}).items():
        if data.get(key) != value:
            raise ModelCardError(
                f"model card metadata {key!r} reads back as {data.get(key)!r}, expected {value!r}; "
                f"check the template {TEMPLATE_PATH.name}'s front matter"
            )
    return card
