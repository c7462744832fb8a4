"""Smoke tests of the accelerate recipes under recipes/ (tiny models, in-process)."""

from __future__ import annotations

import json

import pytest
import torch

from tests.helpers.models import tiny_llama


def test_gpu_request_without_gpus_is_a_clear_error(monkeypatch):
    from recipes.common import make_accelerator

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    # What accelerate's multi-GPU launcher (torchrun) puts in the environment of each process.
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    with pytest.raises(SystemExit, match="torch.cuda.is_available\\(\\) is False.*accelerate_cpu.yaml"):
        make_accelerator(False, "recipes/qat")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(SystemExit, match="asks for 2 GPU processes on this machine but it has 1"):
        make_accelerator(False, "recipes/qat")


def test_recipe_configs_are_valid_accelerate_configs():
    from pathlib import Path

    import yaml
    from accelerate.commands.config.config_args import ClusterConfig

    root = Path(__file__).resolve().parents[2] / "recipes"
    for recipe in ("causal_lm", "image_classifier", "qat"):
        for kind, use_cpu in (("cpu", True), ("gpu", False)):
            path = root / recipe / f"accelerate_{kind}.yaml"
            cfg = ClusterConfig.from_yaml_file(str(path))
            assert cfg.use_cpu is use_cpu, path
            assert yaml.safe_load(path.read_text())["num_machines"] == 1
        assert (root / recipe / "README.md").is_file()


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("tiny_llama")
    text = "\n".join(
        f"the {a} cat sat on the {b} mat number {i} and then it {c}"
        for i, (a, b, c) in enumerate(
            zip(["black", "white", "small"] * 20, ["red", "blue"] * 30, ["slept", "ran", "ate", "sang"] * 15)
        )
    )
    calib = root / "calib.txt"
    calib.write_text(text)
    words = sorted(set(text.split()))
    vocab = {w: i for i, w in enumerate(["<unk>", "</s>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="</s>")
    model_dir = root / "model"
    tiny_llama(vocab=len(vocab), eos_token_id=1, pad_token_id=1).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir, calib


def test_causal_lm_recipe_smoke(tiny_llama_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    import infoq_hf  # noqa: F401
    from infoq_hf import QuantLinear
    from recipes.causal_lm.quantize_causal_lm import main

    model_dir, calib = tiny_llama_dir
    out = tmp_path / "q"
    result = main(
        [
            "--model",
            str(model_dir),
            "--calib",
            str(calib),
            "--num-samples",
            "4",
            "--seq-len",
            "16",
            "--batch-size",
            "2",
            "--avg-bits",
            "3",
            "--group-size",
            "32",
            "--num-directions",
            "8",
            "--out",
            str(out),
            "--cpu",
            "--no-progress",
        ]
    )
    assert result["allocation"]["avg_bits"] <= 3.0 + 1e-9
    policy = json.loads((out / "policy.json").read_text())
    assert "lm_head" not in policy and len(policy) == 14  # 2 layers x 7 projections
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    packed = {n: m.w_bits for n, m in reloaded.named_modules() if isinstance(m, QuantLinear)}
    assert packed == {k: v["w_bits"] for k, v in policy.items()}
    assert len(set(packed.values())) > 1  # mixed precision, not one width everywhere
    ids = torch.tensor([[2, 3, 4, 5]])
    assert torch.isfinite(reloaded(ids).logits).all()


def _needs_fashion_mnist():
    """The two CNN recipe smoke tests read real Fashion-MNIST (Debian's dataset-fashion-mnist, 31 MB,
    fetched once into the asset cache); without the Debian mirror they skip, saying why."""
    from benchmarks.assets import AssetError, fetch

    try:
        fetch("fashion_mnist")
    except AssetError as e:
        pytest.skip(f"Fashion-MNIST unavailable: {e}")


def test_image_classifier_recipe_smoke(tmp_path):
    _needs_fashion_mnist()
    from infoq_hf import QuantConv2d, load_quantized
    from recipes.image_classifier.quantize_classifier import main

    out = tmp_path / "ic"
    result = main(
        [
            "--model",
            "test_resnet",
            "--data",
            "fashion-mnist",
            "--num-samples",
            "32",
            "--eval-samples",
            "64",
            "--batch-size",
            "16",
            "--avg-bits",
            "4",
            "--out",
            str(out),
            "--cpu",
            "--no-progress",
        ]
    )
    assert result["allocation"]["avg_bits"] <= 4.0 + 1e-9 and 0 <= result["quantized_top1"] <= 100
    reloaded = load_quantized(out / "checkpoint")
    policy = json.loads((out / "policy.json").read_text())
    packed = {n: m.w_bits for n, m in reloaded.named_modules() if isinstance(m, QuantConv2d)}
    assert packed and all(policy[n]["w_bits"] == b for n, b in packed.items())
    assert reloaded(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_qat_recipe_smoke(tmp_path):
    _needs_fashion_mnist()
    from recipes.qat.qat import main as qat_main
    from recipes.qat.train_fashion_mnist import main as train_main

    ckpt = tmp_path / "fp32.pt"
    trained = train_main(
        [
            "--epochs",
            "1",
            "--train-samples",
            "256",
            "--test-samples",
            "128",
            "--width",
            "4",
            "--batch-size",
            "64",
            "--out",
            str(ckpt),
            "--cpu",
        ]
    )
    assert ckpt.is_file() and 0 <= trained["top1"] <= 100
    out = tmp_path / "qat" / "results.json"
    result = qat_main(
        [
            "--checkpoint",
            str(ckpt),
            "--calib-samples",
            "64",
            "--calib-batch-size",
            "32",
            "--train-samples",
            "128",
            "--test-samples",
            "128",
            "--qat-epochs",
            "1",
            "--batch-size",
            "64",
            "--bits",
            "2,3,4,8",
            "--out",
            str(out),
            "--cpu",
        ]
    )
    saved = json.loads(out.read_text())
    assert set(saved["runs"]) == {"infoq@3", "uniform-3"}
    infoq, uniform = saved["runs"]["infoq@3"], saved["runs"]["uniform-3"]
    assert infoq["avg_bits"] <= 3.0 + 1e-9 < uniform["avg_bits"]
    first, last = "features.0.conv", "fc"
    assert infoq["policy"][first] == infoq["policy"][last] == 8 == uniform["policy"][first]
    assert all(0 <= r[k] <= 100 for r in saved["runs"].values() for k in ("ptq_top1", "qat_top1"))
    assert result["fp32_top1"] == saved["fp32_top1"]
