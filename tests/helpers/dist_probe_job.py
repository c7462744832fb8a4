"""One InfoQ search on a tiny seeded CNN (and, with --refine N, refined allocations), written as JSON:
run under `accelerate launch`.

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \
        --dynamo_backend no tests/helpers/dist_probe_job.py OUT.json [--width 8] [--batches 2] [--batch-size 32]
    python tests/helpers/dist_probe_job.py OUT.json          # the single-process reference

Every process builds the same model and batches from fixed seeds; `search` splits the probes
across the processes and gathers them, and the main process writes the table (plus the process
count and the search wall time). `tests/sensitivity/test_distributed.py` compares the two tables and
`benchmarks/bench_distributed.py` times them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn as nn


def tiny_cnn(width: int = 8, depth: int = 3, classes: int = 10) -> nn.Sequential:
    """A plain CNN on 1x16x16 inputs whose blocks are the children of one Sequential (InfoQ's observers)."""
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU())]
    for i in range(depth - 1):
        layers.append(nn.Sequential(nn.Conv2d(width * 2**i, width * 2 ** (i + 1), 3, stride=2, padding=1), nn.ReLU()))
    layers.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width * 2 ** (depth - 1), classes)))
    return nn.Sequential(*layers).eval()


def seeded_batches(n_batches: int, batch_size: int, classes: int = 10, size: int = 16) -> list[tuple]:
    """Inputs with a class-dependent mean, so the labels carry information the layers can lose."""
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(n_batches):
        y = torch.randint(0, classes, (batch_size,), generator=g)
        x = torch.randn(batch_size, 1, size, size, generator=g) + y.view(-1, 1, 1, 1).float() / classes
        batches.append((x, y))
    return batches


def run(
    out: str,
    *,
    width: int,
    depth: int,
    n_batches: int,
    batch_size: int,
    directions: int,
    use_accelerate: bool,
    refine: int = 0,
):
    from infoq_hf import Budget, allocate
    from infoq_hf import refine as refine_policy
    from infoq_hf.sensitivity import search

    accelerator = None
    if use_accelerate:
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=True)
    torch.set_num_threads(1)  # each process one thread: the comparison is about splitting probes
    model = tiny_cnn(width, depth)
    batches = seeded_batches(n_batches, batch_size)
    started = time.perf_counter()
    table = search(
        model,
        batches,
        bits=(2, 3, 4, 8),
        method="infoq",
        accelerator=accelerator,
        progress=False,
        num_directions=directions,
        # observers at the blocks and both terms: several observer terms, so the first-order backward
        # passes are really split over the processes (the default observes the output alone)
        scores="calibrated",
        task_observers="last",
        input_weight=1.0,
    )
    wall = time.perf_counter() - started
    refined = {}
    if refine:  # candidates split over the processes; the result must not depend on how many
        ilp = allocate(table, Budget(avg_bits=2.5), pin_first_last=False)
        kw = dict(passes=refine, accelerator=accelerator, progress=False)
        refined["refined"] = refine_policy(ilp, model, batches, **kw)
        # screened on the first batch, the best two of four confirmed on both: both stages split
        refined["screened"] = refine_policy(ilp, model, batches, screen=1, confirmed=2, **kw)
    if accelerator is None or accelerator.is_main_process:
        data = table.to_dict()
        for name, policy in refined.items():
            r = policy.report.refinement.to_dict()
            r.pop("wall_s")
            data[name] = {"policy": policy.to_dict(), "refinement": r}
        data["job"] = {"processes": 1 if accelerator is None else accelerator.num_processes, "search_wall_s": wall}
        with open(out, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
    if accelerator is not None:
        # Not accelerator.wait_for_everyone(): it passes device_ids=[local rank] to the barrier, which fails
        # for CPU (gloo) processes on a machine that has GPUs (seen on an H200 host, accelerate 1.15).
        torch.distributed.barrier()
        accelerator.end_training()  # tears the process group down cleanly


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="where the main process writes the table JSON")
    p.add_argument("--width", type=int, default=8)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--directions", type=int, default=16)
    p.add_argument("--no-accelerate", action="store_true", help="plain single process, no Accelerator at all")
    p.add_argument(
        "--refine", type=int, default=0, help="refinement passes of an allocation at 2.5 average bits (moves accepted)"
    )
    a = p.parse_args(argv)
    run(
        a.out,
        width=a.width,
        depth=a.depth,
        n_batches=a.batches,
        batch_size=a.batch_size,
        directions=a.directions,
        use_accelerate=not a.no_accelerate,
        refine=a.refine,
    )


if __name__ == "__main__":
    sys.exit(main())
