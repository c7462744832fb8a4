"""The `infoq` command, run in-process through `main([...])` on tiny local models."""

from __future__ import annotations

import json

import pytest
import torch

import infoq_hf
from infoq_hf.cli import main
from infoq_hf.policy import BitPolicy
from infoq_hf.sensitivity import SensitivityTable
from tests.helpers.models import make_calibration_text, make_tiny_llama, tiny_timm

FAST_CALIB = ["--samples", "4", "--seq-len", "12", "--batch-size", "4"]  # 44 token positions >= 32


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return make_tiny_llama(root / "llama"), make_calibration_text(root / "calib.txt"), root


def _logits(model_dir, ids):
    from transformers import AutoModelForCausalLM

    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(model_dir)(ids).logits


def test_cli_end_to_end(assets, hub_server, monkeypatch, capsys):
    llama, calib, root = assets
    fast = root / "fast"
    assert (
        main(
            [
                "quantize",
                str(llama),
                "--bits",
                "2,4,8",
                "--avg-bits",
                "4",
                "--method",
                "weight_mse",
                "--group-size",
                "32",
                "--clip-search",
                "on",
                "--out",
                str(fast),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "average weight bits 4.000" in out and "layers per width" in out
    stored = json.loads((fast / "config.json").read_text())["quantization_config"]
    assert stored["clip_search"] is True and stored["rounding"] == "rtn"  # on, though auto would not clip rtn
    policy = BitPolicy.from_dict(stored["policy"])
    assert "lm_head" not in policy and len(policy) == 14

    # InfoQ itself, on a very small calibration set (4 samples of 12 tokens), then push it.
    infoq_dir = root / "infoq"
    assert (
        main(
            [
                "quantize",
                str(llama),
                "--bits",
                "2,8",
                "--avg-bits",
                "5",
                "--calib",
                str(calib),
                *FAST_CALIB,
                "--group-size",
                "32",
                "--reround",
                "--out",
                str(infoq_dir),
            ]
        )
        == 0
    )
    stored = json.loads((infoq_dir / "config.json").read_text())["quantization_config"]
    assert stored["reround"] is True and stored["rounding"] == "rtn" and stored["clip_search"] is False  # auto
    table = SensitivityTable.load(infoq_dir / "infoq_sensitivity.json")
    assert table.method == "infoq" and table.meta["calibration"]["batches"] == 1
    summary = json.loads((infoq_dir / "infoq_summary.json").read_text())
    assert summary["calibration"]["num_samples"] == 4 and summary["avg_bits"] <= 5 + 1e-9

    # search -> allocate from the scores JSON alone (no model) -> a policy file.
    scores, policy_file = root / "scores.json", root / "policy.json"
    assert (
        main(
            [
                "search",
                str(llama),
                "--bits",
                "2,3,4,8",
                "--method",
                "weight_mse",
                "--group-size",
                "32",
                "--out",
                str(scores),
            ]
        )
        == 0
    )
    assert main(["allocate", str(scores), "--avg-bits", "3", "--solver", "highs", "--out", str(policy_file)]) == 0
    allocated = BitPolicy.from_json(policy_file)
    params = {n: SensitivityTable.load(scores).layers[n]["params"] for n in allocated}
    avg = sum(params[n] * lb.w_bits for n, lb in allocated.items()) / sum(params.values())
    assert avg <= 3 + 1e-9 and set(allocated) == set(SensitivityTable.load(scores).layers)

    # report: table on stdout, plots and a model card in the folder.
    capsys.readouterr()
    assert main(["report", str(infoq_dir), "--repo-id", "test-user/cli-model"]) == 0
    out = capsys.readouterr().out
    assert "sensitivity" in out and "model.layers.0.mlp.up_proj" in out and "average" in out
    for name in ("README.md", "infoq_bits_per_layer.png", "infoq_sensitivity_heatmap.png", "infoq_pareto.png"):
        assert (infoq_dir / name).is_file(), name

    # push to the loopback Hub, download into the empty cache, identical outputs.
    monkeypatch.setenv("HF_TOKEN", hub_server.token)
    assert main(["push", str(infoq_dir), "test-user/cli-model"]) == 0
    files = hub_server.files("test-user/cli-model")
    assert {"model.safetensors", "README.md", "tokenizer.json", "infoq_pareto.png"} <= set(files)
    ids = torch.randint(3, 200, (1, 10), generator=torch.Generator().manual_seed(0))
    assert torch.equal(_logits("test-user/cli-model", ids), _logits(infoq_dir, ids))
    capsys.readouterr()
    assert main(["push", str(infoq_dir), "test-user/cli-model"]) == 2  # exists, no --overwrite
    assert "overwrite" in _error(capsys)
    assert main(["push", str(infoq_dir), "test-user/cli-model", "--overwrite"]) == 0


def test_cli_timm_quantize_data_free_and_push_flag(tmp_path, hub_server, monkeypatch):
    src = tmp_path / "resnet"
    float_model = tiny_timm(directory=src)
    monkeypatch.setenv("HF_TOKEN", hub_server.token)
    out = tmp_path / "q"
    assert (
        main(
            [
                "quantize",
                f"timm:{src}",
                "--bits",
                "4,8",
                "--compression",
                "5",
                "--method",
                "weight_mse",
                "--group-size",
                "none",
                "--out",
                str(out),
                "--push",
                "test-org/cli-resnet",
                "--private",
            ]
        )
        == 0
    )
    loaded = infoq_hf.load_quantized(out)
    assert infoq_hf.compression_ratio(loaded) >= 5 - 1e-6
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    from infoq_hf.hub import load_from_hub

    with torch.no_grad():
        assert torch.equal(load_from_hub("test-org/cli-resnet", token=hub_server.token)(x), loaded(x))
        assert not torch.equal(loaded(x), float_model(x))
    assert hub_server.repo("test-org/cli-resnet").private


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    return err[-1] if err else ""


@pytest.mark.parametrize(
    "argv, message",
    [
        (["quantize", "{llama}", "--avg-bits", "3", "--out", "{tmp}/o", "--bits", "2,9"], "between 2 and 8"),
        (["quantize", "{llama}", "--out", "{tmp}/o", "--method", "weight_mse"], "give a budget"),
        (["quantize", "{llama}", "--avg-bits", "3", "--out", "{tmp}/o"], "needs calibration data"),
        (
            ["quantize", "{llama}", "--avg-bits", "3", "--out", "{tmp}/o", "--calib", "{tmp}/missing.txt"],
            "no such file",
        ),
        (
            ["quantize", "{tmp}/not-a-model", "--avg-bits", "3", "--out", "{tmp}/o"],
            "neither a model folder nor a Hub id",
        ),
        (
            [
                "quantize",
                "{llama}",
                "--avg-bits",
                "3",
                "--out",
                "{tmp}/o",
                "--calib",
                "{llama}/config.json",
                "--method",
                "infoq",
            ],
            "text_column",
        ),
        (["search", "{llama}", "--out", "{tmp}/s.json"], "needs calibration data"),
        (["allocate", "{tmp}/nothing.json", "--avg-bits", "3", "--out", "{tmp}/p.json"], "no such sensitivity table"),
        (["allocate", "{scores}", "--avg-bits", "1.5", "--out", "{tmp}/p.json"], "infeasible"),
        (["allocate", "{scores}", "--out", "{tmp}/p.json"], "give a budget"),
        (["report", "{tmp}/nothing"], "not a folder"),
        (["push", "{tmp}", "test-user/x"], "HF_TOKEN"),
        (["frobnicate"], "invalid choice"),
        (["allocate", "{scores}", "--avg-bits", "-1", "--out", "{tmp}/p.json"], "positive number"),
    ],
)
def test_bad_input_exits_2_with_one_line(argv, message, assets, tmp_path, capsys, monkeypatch, hub_server):
    llama, _, root = assets
    scores = tmp_path / "scores.json"
    table = SensitivityTable("weight_mse", [2, 4], {"a": {"params": 10, "w": {"2": 1.0, "4": 0.1}}})
    table.save(scores)
    argv = [a.format(llama=llama, tmp=tmp_path, scores=scores) for a in argv]
    assert main(argv) == 2
    line = _error(capsys)
    assert message in line, line
    assert not (tmp_path / "o").exists()


def test_help_teaches_and_exits_0(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for word in ("quantize", "search", "allocate", "report", "push", "examples:", "--avg-bits", "Exit codes"):
        assert word in text
    assert main(["quantize", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--calib SPEC" in text and "timm:NAME" in text and "examples:" in text


def test_unexpected_failures_exit_1(assets, tmp_path, capsys, monkeypatch, hub_server):
    import infoq_hf.cli as cli

    def boom(args):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(cli, "cmd_report", boom)  # build_parser looks the handler up at call time
    assert main(["report", str(tmp_path)]) == 1
    line = _error(capsys)
    assert "unexpected RuntimeError: disk on fire" in line and "--debug" in line

    # A refused commit is not bad input: exit 1, and the message says nothing was stored.
    out = tmp_path / "q"
    assert (
        main(
            [
                "quantize",
                f"timm:{make_tiny_timm_dir(tmp_path)}",
                "--bits",
                "4,8",
                "--avg-bits",
                "6",
                "--group-size",
                "none",
                "--method",
                "weight_mse",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    monkeypatch.setenv("HF_TOKEN", hub_server.token)
    hub_server.fail_commits = 403
    assert main(["push", str(out), "test-user/refused"]) == 1
    assert "nothing was published" in _error(capsys)
    assert hub_server.repo("test-user/refused") is None


def make_tiny_timm_dir(tmp_path):
    path = tmp_path / "resnet"
    tiny_timm(directory=path)
    return path
