"""Which files of a checkpoint folder a push uploads: the checkpoint's own, never a symlink's target.

A folder on disk often holds more than the checkpoint (notes, logs, a link into ~/.ssh), and a push makes
all of it public. `checkpoint_files(folder, include)` keeps the names the library and transformers write
for a checkpoint (weights and their index, configs, tokenizer files, the InfoQ table and summary), plus
what the user names in `include`; everything else is left out and listed. A symbolic link is never
followed: it is left out, and naming one is an error.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

logger = logging.getLogger("infoq_hf")

OWN_FILES = re.compile(
    r"^(model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?"
    r"|config\.json|generation_config\.json|infoq_config\.json|infoq_sensitivity\.json|infoq_summary\.json"
    r"|tokenizer\.json|tokenizer_config\.json|special_tokens_map\.json|added_tokens\.json|vocab\.json|vocab\.txt"
    r"|merges\.txt|tokenizer\.model|spiece\.model|chat_template\.(jinja|json)|preprocessor_config\.json"
    r"|processor_config\.json)$"
)


def checkpoint_files(
    folder: Path, include: Iterable[str] = (), *, regenerated: Iterable[str] = ()
) -> tuple[list[Path], list[str]]:
    """(entries to upload, names left out) of `folder`: its own files and those named in `include`;
    hidden entries and `regenerated` names (the card and plots, written afresh) are neither."""
    include, regenerated = set(include), set(regenerated)
    entries = {p.name: p for p in folder.iterdir()}
    missing = sorted(include - set(entries))
    if missing:
        raise FileNotFoundError(f"include names {missing}, which {folder} does not hold")
    keep, left_out = [], []
    for name, path in sorted(entries.items()):
        if name in regenerated or name.startswith("."):
            continue
        if path.is_symlink():
            if name in include:
                raise ValueError(
                    f"{path} is a symbolic link; a push never follows links: copy the file into the folder instead"
                )
            left_out.append(name)
        elif (OWN_FILES.match(name) and path.is_file()) or name in include:
            keep.append(path)
        else:
            left_out.append(name)
    if left_out:
        logger.warning(
            "push leaves out what is not part of the checkpoint in %s: %s; name them in include=[...] to upload them",
            folder,
            left_out,
        )
    return keep, left_out


def copy_without_links(path: Path, to: Path) -> None:
    """Copy a file, or a folder without the symbolic links inside it."""
    if path.is_dir():
        shutil.copytree(path, to, ignore=lambda root, names: [n for n in names if (Path(root) / n).is_symlink()])
    else:
        shutil.copyfile(path, to, follow_symlinks=False)


__all__ = ["OWN_FILES", "checkpoint_files", "copy_without_links"]
