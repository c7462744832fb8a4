"""InfoQ's information change measured to first order (one backward pass per observer term) against
the probes (one forward pass per layer), on SmolLM2-135M and the Fashion-MNIST ResNet-8.

    python -m benchmarks.studies.first_order     # ~25 min on 2 CPU cores: results/first_order.md
    python -m benchmarks.studies.first_order --estimates first_order --search-samples 16 --no-cnn \
        --out benchmarks/results/first_order_search16.md     # the first order on 16 search windows

Each model is searched with both estimates, seeds 0, 1 and 2 (the seed draws the random directions),
and every table goes through the product's pipeline at each budget. SmolLM2: its setup of
`search_noise` (32x128 calibration tokens, search on the first 4 windows, candidates {2,3,4,8}, group
64, GPTQ candidates on the budget's uniform start), dev perplexity on the 16 dev windows. ResNet-8: the
setup of `probe_width_cnn` (per channel, round to nearest, 512 calibration images), dev top-1 on 10000
training images the checkpoint was not trained on. Reported: the search's wall time, the Spearman
correlation of the two estimates' per-layer alphas (same seed), and the dev metric per seed. Dev data
only: this study chooses the default. The ResNet-8 part needs the recipe's checkpoint (`--checkpoint`;
skipped when missing).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

from infoq_hf import InfoQConfig, quantizable_layers, quantize_with_infoq, search
from infoq_hf.pipeline.data import first_samples

from .. import common
from .probe_width_cnn import fashion_dev_split

BITS = (2, 3, 4, 8)
ESTIMATES = ("probe", "first_order")


def _searches(model, calib, seeds, estimates, **kw):
    tables, seconds = {}, {}
    for estimate in estimates:
        for seed in seeds:
            started = time.perf_counter()
            tables[estimate, seed] = search(
                model,
                calib,
                bits=BITS,
                seed=seed,
                progress=False,
                **{**common.CALIBRATED, "change_estimate": estimate},
                **kw,
            )
            seconds[estimate, seed] = time.perf_counter() - started
            print(f"{estimate}, seed {seed}: search {seconds[estimate, seed]:.1f} s", flush=True)
    return tables, seconds


def _rows(title, tables, seconds, metric, seeds, budgets, names, metric_name, estimates):
    lines = [
        f"## {title}",
        "",
        "| estimate | search s (mean) | alpha Spearman with the probes' (same seed, when run) | "
        + " | ".join(f"{b:g} bits: {metric_name} per seed | {b:g} bits: mean" for b in budgets)
        + " |",
        "|---|---|---|" + "---|---|" * len(budgets),
    ]
    for estimate in estimates:
        rho = "-"
        if "probe" in estimates:
            rho = "{:.3f}".format(
                statistics.mean(
                    common.spearman(
                        [tables[estimate, s].layers[n]["alpha"] for n in names],
                        [tables["probe", s].layers[n]["alpha"] for n in names],
                    )
                    for s in seeds
                )
            )
        cells = []
        for b in budgets:
            values = [metric[estimate, s, b] for s in seeds]
            cells += [" / ".join(f"{v:.2f}" for v in values), f"{statistics.mean(values):.2f}"]
        mean_s = statistics.mean(seconds[estimate, s] for s in seeds)
        lines.append(f"| {estimate} | {mean_s:.1f} | {rho} | " + " | ".join(cells) + " |")
    return lines + [""]


def smollm2(seeds, budgets, estimates, windows):
    skip = ["lm_head"]
    model, _, calib, dev, _ = common.smollm2_data(32, 16, 0)
    searched = first_samples(calib, windows)
    tables, seconds = _searches(model, searched, seeds, estimates, group_size=64, skip_modules=skip)
    names = list(quantizable_layers(model, skip_modules=skip))
    starts = common.CandidatesByStart(model, {n: BITS for n in names}, calib, common.gptq_scheme(64))
    ppl = {}
    for budget in budgets:
        for (estimate, seed), table in tables.items():
            quantized = copy.deepcopy(model)
            config = InfoQConfig(
                bits=list(BITS),
                budget={"avg_bits": budget},
                group_size=64,
                calibration=calib,
                search_samples=windows,
                seed=0,
            )
            candidates = starts.for_budget(table, budget)
            quantize_with_infoq(
                quantized, config, table=table, candidates=candidates, skip_modules=skip, progress=False
            )
            ppl[estimate, seed, budget] = common.perplexity(quantized, dev)
            print(f"{estimate}, seed {seed}, {budget} bits: dev ppl {ppl[estimate, seed, budget]:.2f}", flush=True)
    title = f"SmolLM2-135M, search on {windows} windows: dev perplexity (16x128 tokens)"
    return _rows(title, tables, seconds, ppl, seeds, budgets, names, "dev ppl", estimates)


def fashion_resnet(checkpoint, seeds, budgets, estimates):
    model, calib, dev = fashion_dev_split(checkpoint)
    tables, seconds = _searches(model, calib, seeds, estimates)
    top1 = {}
    for (estimate, seed), table in tables.items():
        for budget in budgets:
            m = copy.deepcopy(model)
            config = InfoQConfig(
                bits=BITS,
                group_size=None,
                calibration=calib,
                pin_first_last=False,
                budget={"avg_bits": budget},
                seed=seed,
            )
            quantize_with_infoq(m, config, table=table, progress=False)
            top1[estimate, seed, budget] = common.top1(m, dev)
            print(f"{estimate}, seed {seed}, {budget} bits: dev top-1 {top1[estimate, seed, budget]:.2f}", flush=True)
    title = f"Fashion-MNIST ResNet-8: dev top-1 % (float {common.top1(model, dev):.2f})"
    names = list(quantizable_layers(model))
    return _rows(title, tables, seconds, top1, seeds, budgets, names, "dev top-1", estimates)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budgets", type=float, nargs="+", default=[3.5, 3.0, 2.5], help="SmolLM2's average bits")
    p.add_argument("--cnn-budgets", type=float, nargs="+", default=[3.0, 2.5], help="ResNet-8's average bits")
    p.add_argument("--estimates", nargs="+", choices=ESTIMATES, default=list(ESTIMATES))
    p.add_argument(
        "--search-samples", type=int, default=4, help="SmolLM2's search windows (the check: the next as many)"
    )
    p.add_argument("--no-cnn", action="store_true", help="SmolLM2 only")
    p.add_argument("--checkpoint", default="out/fashion_resnet8.pt")
    p.add_argument("--out", default="benchmarks/results/first_order.md")
    args = p.parse_args()
    lines = [
        f"# InfoQ's information change: first order against probes ({common.machine()})",
        "",
        "Command: `" + " ".join(["python -m benchmarks.studies.first_order", *sys.argv[1:]]) + "`",
        "",
    ]
    if args.no_cnn:
        pass
    elif Path(args.checkpoint).exists():
        lines += fashion_resnet(args.checkpoint, args.seeds, args.cnn_budgets, args.estimates)
    else:
        print(f"no ResNet-8 checkpoint at {args.checkpoint}: its part is skipped")
    lines += smollm2(args.seeds, args.budgets, args.estimates, args.search_samples)
    Path(args.out).write_text("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
