"""Wall time of one InfoQ search split over N `accelerate launch` processes vs one process.

    python -m benchmarks.bench_distributed [--processes 2] [--repeats 3] [--width 32] [--depth 5] ...

Runs `tests/helpers/dist_probe_job.py` (a seeded CNN, seeded batches) once as a plain process and once
under `accelerate launch --multi_gpu --num_processes N` on the CPU (gloo), `--repeats` times each,
alternating. Reports the search's own wall time (inside `search`, the gathered probes included)
and the whole command's wall time (interpreter start, process-group setup), checks that every run
produced the same table, and writes `benchmarks/results/distributed_<host>.json`.
Each process is given one thread, so N processes use N cores; the machine needs N free cores for
the split to pay off.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from tests.helpers.distributed import PROBE_JOB as JOB  # noqa: E402
from tests.helpers.distributed import accelerate_command, comparable, job_env  # noqa: E402


def timed(cmd: list[str]) -> float:
    started = time.perf_counter()
    proc = subprocess.run(cmd, env=job_env(), capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - started


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--width", type=int, default=48)
    p.add_argument("--depth", type=int, default=6)
    p.add_argument("--batches", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--directions", type=int, default=64)
    p.add_argument("--out", default=None, help="result JSON (default benchmarks/results/distributed_<host>.json)")
    a = p.parse_args(argv)
    job_args = [
        "--width",
        str(a.width),
        "--depth",
        str(a.depth),
        "--batches",
        str(a.batches),
        "--batch-size",
        str(a.batch_size),
        "--directions",
        str(a.directions),
    ]
    runs = {"1": [], str(a.processes): []}
    tables = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(a.repeats):
            for n in (1, a.processes):
                out = Path(tmp) / f"{n}_{r}.json"
                cmd = (
                    [sys.executable, str(JOB), str(out), "--no-accelerate", *job_args]
                    if n == 1
                    else accelerate_command(n, out, *job_args)
                )
                total = timed(cmd)
                table, job = comparable(out)
                tables.append(table)
                runs[str(n)].append({"search_s": job["search_wall_s"], "command_s": total})
                print(
                    f"repeat {r} processes {n}: search {job['search_wall_s']:.2f} s, command {total:.2f} s", flush=True
                )
    identical = all(t == tables[0] for t in tables)
    if not identical:
        raise SystemExit("the tables differ between runs: the split is not exact")

    def median(n, key):
        return statistics.median(x[key] for x in runs[n])

    n = str(a.processes)
    result = {
        "job": {
            "width": a.width,
            "depth": a.depth,
            "batches": a.batches,
            "batch_size": a.batch_size,
            "directions": a.directions,
            "layers": len(tables[0]["layers"]),
            "bits": tables[0]["bits"],
        },
        "runs": runs,
        "median_search_s": {"1": median("1", "search_s"), n: median(n, "search_s")},
        "median_command_s": {"1": median("1", "command_s"), n: median(n, "command_s")},
        "speedup_search": median("1", "search_s") / median(n, "search_s"),
        "tables_identical": identical,
        "machine": {
            "host": platform.node(),
            "cpus": os.cpu_count(),
            "load_avg_1m_at_end": os.getloadavg()[0],
            "python": platform.python_version(),
        },
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    out = Path(a.out) if a.out else REPO / "benchmarks" / "results" / f"distributed_{platform.node() or 'host'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(
        f"median search: 1 process {result['median_search_s']['1']:.2f} s, {n} processes "
        f"{result['median_search_s'][n]:.2f} s (x{result['speedup_search']:.2f}); "
        f"command {result['median_command_s']['1']:.2f} s vs {result['median_command_s'][n]:.2f} s -> {out}"
    )
    return result


if __name__ == "__main__":
    main()
