"""The `infoq` command on bad input (exit code 2 and one line naming the problem) and reusing a saved table or
policy without searching again, recording no local path. Tiny models built from configs; no network."""

from __future__ import annotations

import errno
import json
import shutil

import pytest

import infoq_hf.cli  # noqa: F401  (loads the modules the tests patch)
import infoq_hf.pipeline.stages  # noqa: F401
from tests.helpers.models import make_calibration_text, make_tiny_llama

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def cli_assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    return make_tiny_llama(root / "llama"), make_calibration_text(root / "calib.txt"), root


def _cli(argv, capsys):
    from infoq_hf.cli import main

    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err.strip()


def test_cli_bad_input_exits_2_with_one_line(cli_assets, tmp_path, capsys, monkeypatch, hub_server):
    import infoq_hf.allocation
    import infoq_hf.checkpoint
    from infoq_hf.allocation import SolverUnavailableError

    llama, _, _ = cli_assets
    as_list = tmp_path / "list.json"
    as_list.write_text("[1, 2]")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    quantize = ["quantize", llama, "--bits", "2,4,8", "--avg-bits", "4", "--group-size", "32"]
    cases = [
        (["allocate", as_list, "--avg-bits", "3", "--out", tmp_path / "p.json"], "is not a sensitivity table"),
        ([*quantize, "--table", as_list, "--out", tmp_path / "o"], "got a JSON list"),
        ([*quantize, "--calib", empty, "--out", tmp_path / "o"], "is empty"),
    ]
    for argv, message in cases:
        code, err = _cli(argv, capsys)
        assert code == 2 and message in err and len(err.splitlines()) == 1, (argv, err)

    ok = tmp_path / "ok"
    assert _cli([*quantize, "--method", "weight_mse", "--out", ok], capsys)[0] == 0
    with monkeypatch.context() as m:  # a read-only --out (root ignores file modes, so the refusal is simulated)

        def refuse(home, prefix):
            raise PermissionError(errno.EACCES, "Permission denied", str(home))

        m.setattr(infoq_hf.atomic_save, "_make_dir", refuse)
        code, err = _cli([*quantize, "--method", "weight_mse", "--out", ok], capsys)
        assert code == 2 and "permission denied writing" in err, err
    with monkeypatch.context() as m:

        def size_limited(*args, **kwargs):
            raise SolverUnavailableError("solver='gurobi' cannot solve this model: size-limited license")

        m.setattr(infoq_hf.cli.allocate, "allocate", size_limited)  # where `infoq allocate` calls it
        code, err = _cli(
            [
                "allocate",
                ok / "infoq_sensitivity.json",
                "--avg-bits",
                "3",
                "--solver",
                "gurobi",
                "--out",
                tmp_path / "p.json",
            ],
            capsys,
        )
        assert code == 2 and "size-limited" in err, err

    truncated = tmp_path / "truncated"
    shutil.copytree(ok, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    code, err = _cli(["report", truncated], capsys)
    assert code == 2 and "truncated or corrupt" in err, err

    monkeypatch.setenv("HF_TOKEN", "hf_not_a_valid_token")
    code, err = _cli(["push", ok, "test-user/refused"], capsys)
    assert code == 2 and "refused the token (HTTP 401)" in err, err
    assert hub_server.repo("test-user/refused") is None


def test_cli_reuses_a_table_or_a_policy_and_records_no_local_paths(cli_assets, tmp_path, capsys, monkeypatch):
    import infoq_hf.sensitivity
    from infoq_hf.policy import BitPolicy

    llama, calib, _ = cli_assets
    first = tmp_path / "first"
    common = ["--bits", "2,4,8", "--group-size", "32"]
    assert (
        _cli(
            [
                "quantize",
                llama,
                *common,
                "--avg-bits",
                "5",
                "--calib",
                calib,
                "--samples",
                "4",
                "--seq-len",
                "12",
                "--batch-size",
                "4",
                "--out",
                first,
            ],
            capsys,
        )[0]
        == 0
    )

    def no_search(*args, **kwargs):
        raise AssertionError("searched again")

    monkeypatch.setattr(infoq_hf.pipeline.stages, "search", no_search)  # where the pipeline calls it
    monkeypatch.setattr(infoq_hf.cli.search, "search", no_search)  # where `infoq search` calls it
    from_table = tmp_path / "from_table"
    assert (
        _cli(
            [
                "quantize",
                llama,
                *common,
                "--avg-bits",
                "3",
                "--table",
                first / "infoq_sensitivity.json",
                "--out",
                from_table,
            ],
            capsys,
        )[0]
        == 0
    )
    policy_file = tmp_path / "policy.json"
    assert _cli(["allocate", first / "infoq_sensitivity.json", "--avg-bits", "3", "--out", policy_file], capsys)[0] == 0
    from_policy = tmp_path / "from_policy"
    assert _cli(["quantize", llama, *common, "--policy", policy_file, "--out", from_policy], capsys)[0] == 0

    def stored(folder):
        return BitPolicy.from_dict(json.loads((folder / "config.json").read_text())["quantization_config"]["policy"])

    assert stored(from_policy) == BitPolicy.from_json(policy_file) == stored(from_table)
    code, err = _cli(
        ["quantize", llama, *common, "--avg-bits", "3", "--policy", policy_file, "--out", tmp_path / "x"], capsys
    )
    assert code == 2 and "--policy applies a given policy as it is" in err

    monkeypatch.undo()
    assert _cli(["report", first], capsys)[0] == 0
    for name in ("config.json", "infoq_summary.json", "README.md"):
        text = (first / name).read_text()
        assert str(tmp_path) not in text and str(calib.parent) not in text, name
    assert "calib.txt" in (first / "config.json").read_text()  # the base name is what is recorded
