"""Probes split over `accelerate launch` processes (CPU, gloo) give exactly the single-process table."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

JOB = Path(__file__).with_name("dist_probe_job.py")
REPO = JOB.parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def job_env() -> dict:
    env = dict(os.environ)
    env.update(ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def accelerate_command(processes: int, out: Path, *job_args: str) -> list[str]:
    launcher = shutil.which("accelerate", path=str(Path(sys.executable).parent)) or shutil.which("accelerate")
    base = [launcher] if launcher else [sys.executable, "-m", "accelerate.commands.accelerate_cli"]
    return [
        *base,
        "launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(JOB),
        str(out),
        *job_args,
    ]


def run_job(cmd: list[str], timeout: float = 120) -> None:
    proc = subprocess.run(cmd, env=job_env(), capture_output=True, text=True, timeout=timeout, cwd=REPO)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )


def comparable(path: Path) -> tuple[dict, dict]:
    data = json.loads(path.read_text())
    job = data.pop("job")
    data["meta"].pop("cost")  # wall time and per-process counters legitimately differ
    return data, job


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
    assert two == one
