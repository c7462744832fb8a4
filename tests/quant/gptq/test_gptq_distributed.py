"""GPTQ candidates split over 2 `accelerate launch` processes (CPU, gloo) equal one process's, bit for bit."""

from __future__ import annotations

import sys

import pytest
import torch

from tests.helpers.distributed import GPTQ_JOB as JOB
from tests.helpers.distributed import accelerate_command, run_job

pytestmark = pytest.mark.distributed


def test_two_processes_give_the_candidates_of_one(tmp_path):
    single, multi = tmp_path / "single.pt", tmp_path / "multi.pt"
    run_job([sys.executable, str(JOB), str(single), "--no-accelerate"], timeout=600)
    run_job(accelerate_command(2, multi, job=JOB), timeout=600)
    one, two = torch.load(single), torch.load(multi)
    for inputs in ("float", "prefix"):
        a, b = one[inputs], two[inputs]
        assert a["ratios"] == b["ratios"], inputs
        assert a["meta"]["inputs"] == b["meta"]["inputs"]
        assert set(a["rounded"]) == set(b["rounded"]) and len(a["rounded"]) == 14 * 4
        for key, tensors in a["rounded"].items():
            assert all(torch.equal(x, y) for x, y in zip(tensors, b["rounded"][key])), (inputs, key)
        assert "layers_swept" not in a["meta"]  # one process: the meta is as it was
        swept = b["meta"]["layers_swept"]
        assert len(swept) == 2 and sum(swept) == 14 and min(swept) >= 5, swept  # both processes did their share
