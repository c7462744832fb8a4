"""Probes split over `accelerate launch` processes (CPU, gloo) give exactly the single-process table."""

from __future__ import annotations

import sys

import pytest

from tests.helpers.distributed import PROBE_JOB as JOB
from tests.helpers.distributed import accelerate_command, comparable, run_job

pytestmark = pytest.mark.distributed


def test_two_processes_equal_one(tmp_path):
    single, multi = tmp_path / "single.json", tmp_path / "multi.json"
    run_job([sys.executable, str(JOB), str(single), "--no-accelerate", "--refine", "9"])
    run_job(accelerate_command(2, multi, "--refine", "9"))
    one, one_job = comparable(single)
    two, two_job = comparable(multi)
    assert one_job["processes"] == 1 and two_job["processes"] == 2
    assert set(two["layers"]) == set(one["layers"]) and len(one["layers"]) == 4
    for name, entry in one["layers"].items():
        # Exact equality, float for float: the split must not change a single score.
        assert two["layers"][name] == entry, name
        assert entry["w"]["2"] > entry["w"]["8"] > 0.0
    assert one["refined"]["refinement"]["accepted"] >= 1  # refined allocations (with a move accepted) compared too
    assert one["screened"]["refinement"]["screened"] > 0  # and a screened refinement's
    assert two == one
