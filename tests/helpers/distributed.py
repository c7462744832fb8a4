"""Launching a job script under `accelerate launch` (CPU, gloo) or as one plain process, for the
distributed tests; the jobs are the `dist_*_job.py` scripts beside this file."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

PROBE_JOB = Path(__file__).with_name("dist_probe_job.py")
GPTQ_JOB = Path(__file__).with_name("dist_gptq_job.py")
REPO = Path(__file__).resolve().parents[2]


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


def accelerate_command(processes: int, out: Path, *job_args: str, job: Path = PROBE_JOB) -> list[str]:
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
        str(job),
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
    """A probe job's output without what legitimately differs between runs, and its `job` record."""
    data = json.loads(path.read_text())
    job = data.pop("job")
    data["meta"].pop("cost")  # wall time and per-process counters legitimately differ
    return data, job
