"""Whole-or-nothing checkpoint folders: stage the new files, then move them in with the old ones kept aside.

`atomic_checkpoint(target)` yields an empty staging folder; on a clean exit what was written there goes
into `target`:
- a new `target` appears by one rename of the complete, fsynced staging folder;
- into an existing `target`, the checkpoint's own files are replaced one `os.replace` each, the deciding
  config files last. Before each replacement the old version is kept (a hard link, else a copy) in a
  backup folder `target/.infoq-backup-*`, which nothing of the cleanup deletes; the weight files of a
  previous save that the new one does not write (an unsharded `model.safetensors` beside new shards, or
  old shards beside a new single file) move there too. When everything is in, the backup is deleted.
  On any failure the old files are moved back; if that fails too (a disk that keeps failing), the backup
  is left where it is and the error names it, with the command that restores the previous checkpoint.
Other files in `target` are never touched. Every staged *.safetensors file gets its tensors' digests
(see `integrity`). A failed fsync of the folder after the last rename only warns: the folder is whole,
but a power loss right then may undo the renames.

A save killed outright (SIGKILL, power loss) leaves its staging folder `.infoq-save-<pid>@<host>.*`;
later saves into the same place delete it once its process is provably gone (same host, pid not alive).
A SIGKILL between the final renames can leave old and new files mixed, with the old ones in the backup
folder; the loader's checks (header shapes, digests) refuse such a mix.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
import warnings
from contextlib import contextmanager
from pathlib import Path

from .integrity import seal_safetensors

STAGING_PREFIX = ".infoq-save-"
BACKUP_PREFIX = ".infoq-backup-"
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]
_STAGING_NAME = re.compile(rf"^{re.escape(STAGING_PREFIX)}(\d+)@([0-9a-f]{{8}})\.[0-9a-f]{{8}}$")
# Weight files a save writes (transformers' names); those of a previous save not rewritten are retired.
_WEIGHT_FILE = re.compile(r"^model(-\d{5}-of-\d{5})?\.safetensors(\.index\.json)?$")
_NO_HARD_LINKS = {errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS}


class RestoreFailedError(OSError):
    """A save failed and putting the previous files back failed too; the message says where they are.

    `backup`: the folder holding the previous versions still to move back; `new`: the new files to delete."""

    def __init__(self, backup: Path, new: list[str], *args):
        super().__init__(*args)
        self.backup, self.new = backup, new


@contextmanager
def atomic_checkpoint(target: str | os.PathLike, deciding_files=("config.json", "infoq_config.json")):
    """Yield an empty staging folder; on a clean exit, move what was written there into `target` (see
    module doc). `deciding_files` are the files that decide what loads: moved in last."""
    target = Path(os.path.abspath(target))  # "." and "dir/.." get their real names
    if target.exists() and not target.is_dir():
        raise NotADirectoryError(
            f"cannot save a checkpoint into {target}: it is a file, not a folder; "
            "pass a folder path (nothing was written)"
        )
    fresh = not target.exists()
    # A new checkpoint is staged beside its target; an existing one inside it (same filesystem, and
    # no write access to the parent needed, e.g. saving into ".").
    home = target.parent if fresh else target
    if not home.is_dir():
        home.mkdir(parents=True)
    remove_stale_staging(home)
    staging = _make_dir(home, f"{STAGING_PREFIX}{os.getpid()}@{_HOST}.")
    try:
        yield staging
        for f in sorted(staging.rglob("*.safetensors")):
            seal_safetensors(f)
        _settle_tree(staging)
        if not (fresh and _rename_new_folder(staging, target)):
            _replace_files(staging, target, deciding_files)
    except RestoreFailedError:
        raise
    except Exception as e:
        if getattr(e, "errno", None) == errno.ENOSPC or "No space left on device" in str(e):  # safetensors' own error
            raise OSError(
                errno.ENOSPC,
                f"no space left on the device while saving the checkpoint into {target}; "
                "its previous files are unchanged. Free some space and save again",
            ) from e
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def remove_stale_staging(home: Path) -> list[Path]:
    """Delete the staging folders in `home` left by saves on this host whose process is gone."""
    removed = []
    try:
        entries = list(home.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _STAGING_NAME.match(entry.name)
        if match and match.group(2) == _HOST and not _pid_alive(int(match.group(1))) and entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process: alive
        return True
    return True


def _make_dir(home: Path, prefix: str) -> Path:
    # os.mkdir (not tempfile.mkdtemp, which forces 0700) so the saved folder gets the umask's mode.
    for _ in range(100):
        path = home / f"{prefix}{secrets.token_hex(4)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a staging folder in {home}")


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_complete_folder(folder: Path) -> None:
    """fsync a folder whose renames are all done: a failure only warns (nothing is missing or mixed)."""
    try:
        _fsync(folder)
    except OSError as e:
        warnings.warn(
            f"the checkpoint in {folder} is complete, but flushing the folder to disk failed ({e}); "
            "a power loss now could undo the save",
            RuntimeWarning,
            stacklevel=2,
        )


def _settle_tree(folder: Path) -> None:
    """Give every staged file the mode a plain `open` would (safetensors writes 0600), then fsync it."""
    umask = os.umask(0)
    os.umask(umask)
    for root, _, files in os.walk(folder):
        for f in files:
            os.chmod(Path(root) / f, 0o666 & ~umask)
            _fsync(Path(root) / f)
        _fsync(Path(root))


def _rename_new_folder(staging: Path, target: Path) -> bool:
    """Rename the staged folder to the (still absent) target; False if the target appeared meanwhile."""
    try:
        os.rename(staging, target)  # fails rather than replaces when a racing save created target
    except OSError:
        if target.is_dir():
            return False
        raise
    _fsync_complete_folder(target.parent)
    return True


def _replace_files(staging: Path, target: Path, deciding_files) -> None:
    """Move every entry of `staging` into the existing `target`, deciding files last, the old versions and
    the previous save's other weight files kept in a backup folder until all is in; undo on failure."""
    present = {p.name for p in staging.iterdir()}
    names = sorted(present - set(deciding_files)) + [n for n in deciding_files if n in present]
    writes_weights = any(_WEIGHT_FILE.match(n) for n in present)  # a save of other files (a card) retires none
    retired = sorted(
        p.name for p in target.iterdir() if writes_weights and _WEIGHT_FILE.match(p.name) and p.name not in present
    )
    backup = _make_dir(target, BACKUP_PREFIX)
    done: list[tuple[str, bool]] = []  # (name, whether an old version was backed up)
    try:
        for name in retired:  # a previous save's weights that this save does not rewrite
            done.append((name, True))
            os.replace(target / name, backup / name)
        for name in names:
            old = target / name
            had_old = old.exists() or old.is_symlink()
            if had_old:  # keep the old version (a hard link: the name never goes missing) to undo with
                _keep_copy(old, backup / name)
            done.append((name, had_old))
            os.replace(staging / name, old)
    except BaseException as failure:
        _restore(done, backup, target, failure)
        raise
    shutil.rmtree(backup, ignore_errors=True)
    _fsync_complete_folder(target)


def _restore(done, backup: Path, target: Path, failure: BaseException) -> None:
    """Undo `done` (newest first) from `backup`; delete the backup only when everything is back."""
    undo = list(reversed(done))
    for i, (name, had_old) in enumerate(undo):
        try:
            if had_old and _same_file(backup / name, target / name):  # rename would leave both names
                os.unlink(backup / name)
            elif had_old and (backup / name).exists():
                os.replace(backup / name, target / name)
            elif not had_old and (target / name).exists():
                (shutil.rmtree if (target / name).is_dir() else os.unlink)(target / name)
        except OSError as e:
            kept = sorted(n for n, old in undo[i:] if old and (backup / n).exists())
            new = sorted(n for n, old in undo[i:] if not old and (target / n).exists())
            raise RestoreFailedError(
                backup,
                new,
                e.errno,
                f"saving the checkpoint into {target} failed ({failure}), and putting its previous files "
                f"back failed too ({e}). The previous checkpoint is kept: its files {kept} are in {backup}. To "
                f"restore it, move every file of that folder back into {target}"
                + (f" and delete the new {new} there" if new else "")
                + "; or save again once the disk works",
            ) from failure
    shutil.rmtree(backup, ignore_errors=True)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _keep_copy(path: Path, to: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        os.replace(path, to)  # a folder cannot be replaced in one rename: move the old one aside
        return
    try:
        os.link(path, to, follow_symlinks=False)
    except OSError as e:
        if e.errno not in _NO_HARD_LINKS:
            raise
        shutil.copy2(path, to, follow_symlinks=False)


__all__ = ["BACKUP_PREFIX", "STAGING_PREFIX", "RestoreFailedError", "atomic_checkpoint", "remove_stale_staging"]
