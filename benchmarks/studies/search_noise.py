"""How much InfoQ's allocation moves with the search's random directions, their number, and bfloat16
forwards.

    python -m benchmarks.studies.search_noise     # ~20 min on 2 CPU cores; writes results/search_noise_smollm2.md
    python -m benchmarks.studies.search_noise --variants "task term only" \
        --out benchmarks/results/search_noise_task_only_smollm2.md

SmolLM2-135M, the product's setup (32x128 calibration tokens, search on the first 4 windows,
candidates {2,3,4,8}, group 64, GPTQ candidates on the budget's uniform start, packed from them through
`quantize_with_infoq`). Each variant is searched with seeds 0, 1 and 2 (the seed draws the random
directions the activations are projected on): the default (64 directions, float32), 256 directions,
and the default under `torch.autocast("cpu", dtype=torch.bfloat16)` (bfloat16 forwards; projections
and MI estimates stay float32); `--variants` also offers the task term alone (no input term) and
4-bit probes (the default is 3), in float32 and in bfloat16.
Reported: search wall time, the Spearman correlation of the per-layer alphas between seeds, and dev
perplexity at 3.5 and 2.5 average bits. Dev windows only: this study chooses defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import statistics
import time
from pathlib import Path

import torch

from infoq_hf import InfoQConfig, quantizable_layers, quantize_with_infoq, search
from infoq_hf.pipeline.data import first_samples

from .. import common

BITS = (2, 3, 4, 8)
SKIP = ["lm_head"]
VARIANTS = {  # label: (InfoQ options, bfloat16 forwards)
    "64 directions, float32 (default)": ({}, False),
    "256 directions, float32": ({"num_directions": 256}, False),
    "64 directions, bfloat16 forwards": ({}, True),
    "task term only": ({"input_weight": 0.0}, False),
    "64 directions, float32, 4-bit probes": ({"probe_bits": 4}, False),
    "64 directions, bfloat16 forwards, 4-bit probes": ({"probe_bits": 4}, True),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS)[:3])
    p.add_argument("--budgets", type=float, nargs="+", default=[3.5, 2.5])
    p.add_argument("--out", default="benchmarks/results/search_noise_smollm2.md")
    args = p.parse_args()
    model, _, calib, dev, _ = common.smollm2_data(32, 16, 0)
    searched = first_samples(calib, 4)
    tables, seconds = {}, {}
    variants = {label: VARIANTS[label] for label in args.variants}
    for (label, (options, bf16)), seed in itertools.product(variants.items(), args.seeds):
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        started = time.perf_counter()
        with autocast:
            tables[label, seed] = search(
                model,
                searched,
                bits=BITS,
                group_size=64,
                skip_modules=SKIP,
                seed=seed,
                **{**common.PROBED_CALIBRATED, **options},
            )
        seconds[label, seed] = time.perf_counter() - started
        print(label, seed, f"search {seconds[label, seed]:.1f} s", flush=True)
    names = list(quantizable_layers(model, skip_modules=SKIP))
    starts = common.CandidatesByStart(model, {n: BITS for n in names}, calib, common.gptq_scheme(64))
    ppl = {}
    for budget in args.budgets:
        for (label, seed), table in tables.items():
            quantized = copy.deepcopy(model)
            config = InfoQConfig(
                bits=list(BITS), budget={"avg_bits": budget}, group_size=64, calibration=calib, search_samples=4, seed=0
            )
            candidates = starts.for_budget(table, budget)
            quantize_with_infoq(
                quantized, config, table=table, candidates=candidates, skip_modules=SKIP, progress=False
            )
            ppl[label, seed, budget] = common.perplexity(quantized, dev)
            print(label, seed, budget, f"dev ppl {ppl[label, seed, budget]:.2f}", flush=True)
    seeds = args.seeds
    lines = [
        f"# InfoQ search noise: seeds, directions, bfloat16 forwards (SmolLM2-135M, {common.machine()})",
        "",
        "Command: `python -m benchmarks.studies.search_noise`",
        "",
        "Dev perplexity (16x128 tokens) of the pipeline's allocation from each search; seeds "
        + ", ".join(map(str, seeds))
        + ". Spearman: of the per-layer alphas, mean over seed pairs.",
        "",
        "| search | search s (mean) | alpha Spearman between seeds | "
        + " | ".join(f"{b:g} bits: dev ppl per seed | {b:g} bits: mean" for b in args.budgets)
        + " |",
        "|---|---|---|" + "---|---|" * len(args.budgets),
    ]
    for label in variants:
        alphas = {s: [tables[label, s].layers[n]["alpha"] for n in names] for s in seeds}
        rho = statistics.mean(common.spearman(alphas[a], alphas[b]) for a, b in itertools.combinations(seeds, 2))
        cells = []
        for b in args.budgets:
            values = [ppl[label, s, b] for s in seeds]
            cells += [" / ".join(f"{v:.2f}" for v in values), f"{statistics.mean(values):.2f}"]
        mean_s = statistics.mean(seconds[label, s] for s in seeds)
        lines.append(f"| {label} | {mean_s:.1f} | {rho:.3f} | " + " | ".join(cells) + " |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
