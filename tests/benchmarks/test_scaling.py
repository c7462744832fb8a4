"""Tests of benchmarks/scaling.py: the power-law fit, the model shapes it counts, its input checks, and a
tiny end-to-end run whose table has a column for every stage the pipeline timed."""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import scaling


def test_the_fit_recovers_an_exact_power_law():
    x = [1.0e5, 4.0e5, 2.0e6, 9.0e6]
    c, k = scaling.power_fit(x, [3.0 * v**1.5 for v in x])
    assert k == pytest.approx(1.5, rel=1e-12) and c == pytest.approx(3.0, rel=1e-9)


def test_the_fit_is_least_squares_on_logs():
    # log y = 0, 1, 3 at log x = 0, 1, 2: slope 1.5, intercept -1/6 (the closed form of the normal equations)
    c, k = scaling.power_fit([1.0, math.e, math.e**2], [1.0, math.e, math.e**3])
    assert k == pytest.approx(1.5, rel=1e-12) and math.log(c) == pytest.approx(-1 / 6, rel=1e-12)


def test_a_fit_needs_two_sizes_and_positive_times():
    with pytest.raises(ValueError, match="two or more distinct sizes"):
        scaling.power_fit([5.0, 5.0], [1.0, 2.0])
    with pytest.raises(ValueError, match="positive"):
        scaling.power_fit([1.0, 2.0], [0.0, 2.0])


def test_a_sizes_shape_and_linear_parameters_follow_the_rule():
    shape = scaling.llama_shape(*scaling.parse_size("256:3:1000"))
    assert shape["intermediate_size"] == 704  # 8/3 x 256 = 682.7 -> 11 x 64
    assert (shape["num_attention_heads"], shape["num_key_value_heads"]) == (4, 1)
    assert scaling.llama_shape(128, 1, 10)["num_key_value_heads"] == 2  # 2 heads: a quarter does not divide
    h, kv, i, n, v = 256, 64, 704, 3, 1000
    expected = n * (2 * h * h + 2 * h * kv + 3 * h * i) + v * h  # q, o; k, v; gate, up, down; lm_head
    assert scaling.linear_params(scaling.build(shape)) == expected


def test_the_projection_target_is_llama_3_8b():
    target = scaling.build(scaling.TARGET, device="meta")
    assert sum(p.numel() for p in target.parameters()) == 8_030_261_248  # Llama-3-8B's published count
    assert scaling.linear_params(target) == 32 * (2 * 4096**2 + 2 * 4096 * 1024 + 3 * 4096 * 14336) + 128256 * 4096


@pytest.mark.parametrize("bad", ["512:4", "512:4:x", "500:4:1000", "512:0:1000"])
def test_a_malformed_size_is_refused_with_the_expected_form(bad):
    with pytest.raises(ValueError, match="hidden:layers:vocab"):
        scaling.parse_size(bad)


def table(text: str, first_cell: str) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of the markdown table whose header starts with `first_cell`."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_cell} |"))
    cells = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells.append([c.strip() for c in line.strip("|").split("|")])
    return cells[0], cells[2:]


TINY = ["--sizes", "64:1:128", "64:2:256", "--calib", "4", "--seq-len", "16"]


def test_a_tiny_run_reports_every_stage_and_projects_from_positive_times(tmp_path):
    # measured in this process (a child process per measurement costs seconds of imports each)
    check_report(scaling.main([*TINY, "--out", str(tmp_path)], measure=scaling.child))


@pytest.mark.slow
def test_the_tiny_command_measures_in_child_processes(tmp_path):
    # the command as run (--tiny: 32 x 128 tokens, a child process per measurement): about a minute
    check_report(scaling.main(["--tiny", "--out", str(tmp_path)]))


def check_report(out):
    rows = json.loads(out.with_suffix(".json").read_text())
    header, body = table(out.read_text(), "hidden:layers:vocab")
    stages = [s for r in rows for s in r["pipeline"]["times_s"]]
    # the default pipeline's stages, each a column
    for stage in ("search", "gptq candidates", "allocation", "whole-model check", *stages):
        assert f"{stage} s" in header
    assert [r[0] for r in body] == [r["size"] for r in rows] and len(rows) == 2
    col = {name: i for i, name in enumerate(header)}
    for r, cells in zip(rows, body):
        for stage in r["pipeline"]["times_s"]:
            assert float(cells[col[f"{stage} s"]]) >= 0
        total, gptq = r["pipeline"]["wall_s"], r["uniform"]["wall_s"]
        assert total > 0 and gptq > 0 and r["pipeline"]["times_s"]["search"] > 0
        assert float(cells[col["total s"]]) == pytest.approx(total, abs=0.006)
        assert float(cells[col["uniform GPTQ s"]]) == pytest.approx(gptq, abs=0.006)
        assert float(cells[col["total / GPTQ"]]) == pytest.approx(total / gptq, abs=0.006)
        assert total >= sum(r["pipeline"]["times_s"].values()) - 0.01  # the wall time holds every stage
        assert float(cells[col["peak RSS MiB"]]) >= round(r["pipeline"]["rss_baseline_mib"]) > 0
    fit_header, fits = table(out.read_text(), "series")
    assert fit_header[:2] == ["series", "exponent k"]
    names = [f[0] for f in fits]
    assert names[-2:] == ["pipeline total", "uniform 3-bit GPTQ"]
    # the totals' exponents are the fit of the JSON's times, or not fitted when a time is too short to
    # mean anything (tiny models' timings are noise, so no sign is asserted)
    x = [r["pipeline"]["linear_params"] for r in rows]
    totals = ([r["pipeline"]["wall_s"] for r in rows], [r["uniform"]["wall_s"] for r in rows])
    for cells, times in zip(fits[-2:], totals):
        if min(times) >= scaling.MIN_FIT_S:
            assert float(cells[1]) == pytest.approx(scaling.power_fit(x, times)[1], abs=0.006)
            assert float(cells[3]) >= 0
        else:
            assert "not fitted" in cells[1] and cells[3] == "-"
    assert "extrapolation" in out.read_text()
