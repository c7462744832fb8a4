"""Is a perplexity gap larger than the windows' sampling noise? A paired bootstrap over windows.

    python -m benchmarks.ppl_spread      # ~25 min on 2 CPU cores (4 packed models)
    # writes benchmarks/results/ppl_spread_smollm2.md

Reads the widths each row of a `benchmarks.gptq_aware` run packed (`--policies`, written by that run),
packs every row whose budget is a whole number of bits and the uniform allocation at that budget the
same way (sequential GPTQ on the same 32x128 calibration windows, group 64, `lm_head` float), scores
each dev and test window's summed next-token NLL under both, and resamples the windows with
replacement (the same windows for both models, `--resamples` times, fixed seed) to give a 90%
interval of ppl(row) / ppl(uniform) and the share of resamples where the row is below uniform and at
most 0.9x uniform. The test split is scored on the benchmarks' 32 windows and on `--wide-test` windows
(the same 32 first), which narrows the interval. It only reports: nothing here chooses anything.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

from infoq_hf import BitPolicy
from infoq_hf.quant.gptq import gptq_quantize_model

from . import common
from .gptq import GROUP, SKIP


def paired_bootstrap(
    nll_a: torch.Tensor, nll_b: torch.Tensor, per_window: int, resamples: int, seed: int = 0
) -> torch.Tensor:
    """ppl(a) / ppl(b) on `resamples` resamplings of the windows (the same windows for a and b)."""
    if nll_a.shape != nll_b.shape:
        raise ValueError(
            f"the two models were scored on different windows: {tuple(nll_a.shape)} vs {tuple(nll_b.shape)}"
        )
    n = len(nll_a)
    pick = torch.randint(n, (resamples, n), generator=torch.Generator().manual_seed(seed))
    return torch.exp((nll_a - nll_b)[pick].sum(dim=1) / (n * per_window))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policies", default="benchmarks/results/policies/gptq_aware_smollm2_judge4_chains3.json")
    p.add_argument("--calib", type=int, default=32)
    p.add_argument("--dev", type=int, default=16)
    p.add_argument("--eval", type=int, default=32, help="test windows, as the benchmarks report them")
    p.add_argument("--wide-test", type=int, default=128, help="more test windows, the --eval ones first (0: none)")
    p.add_argument("--resamples", type=int, default=10000)
    p.add_argument("--out", default="benchmarks/results/ppl_spread_smollm2.md")
    args = p.parse_args(argv)
    rows = json.loads(Path(args.policies).read_text())
    wide = max(args.eval, args.wide_test)
    model, _, calib, dev, test = common.smollm2_data(args.calib, args.dev, wide)
    splits = {"dev": ("dev", slice(None)), f"test {args.eval}": ("test", slice(args.eval))}  # name: (data, windows)
    if wide > args.eval:
        splits[f"test {wide}"] = ("test", slice(None))

    def scored(widths: dict[str, int]) -> dict:
        m = copy.deepcopy(model)
        gptq_quantize_model(
            m, BitPolicy(widths), calib, scheme={"group_size": GROUP}, skip_modules=SKIP, progress=False
        )
        return {"dev": common.window_nll(m, dev), "test": common.window_nll(m, test)}

    uniform = {}  # budget -> scores of the uniform allocation
    md = [
        (
            f"Paired bootstrap over windows ({args.resamples} resamples, seed 0) of ppl(row) / ppl(uniform), "
            f"SmolLM2-135M, every model packed with sequential GPTQ on {args.calib}x128 calibration tokens, "
            f"group 64, `lm_head` float; "
            f"{args.dev}x128 dev windows; test windows (after dev) the first {args.eval}, and all {wide}; rows from "
            f"`{args.policies}`; {common.machine()}."
        ),
        "",
        "| budget | row | windows | ppl row | ppl uniform | ratio | 90% interval | resamples < 1 | resamples <= 0.9 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, widths in rows.items():
        budget, label = key.split(" | ", 1)
        bits = float(budget)
        if bits != int(bits):
            print(f"skipping {key}: no uniform allocation at {budget} bits", flush=True)
            continue
        if budget not in uniform:
            uniform[budget] = scored({n: int(bits) for n in widths})
        row = scored(widths)
        for split, (data, windows) in splits.items():
            (nll_r, per_window), (nll_u, _) = row[data], uniform[budget][data]
            nll_r, nll_u = nll_r[windows], nll_u[windows]
            ratios = paired_bootstrap(nll_r, nll_u, per_window, args.resamples)
            lo, hi = torch.quantile(ratios, torch.tensor([0.05, 0.95], dtype=ratios.dtype)).tolist()
            ppl_r, ppl_u = (common.perplexity_from_nll(x, per_window) for x in (nll_r, nll_u))
            md.append(
                f"| {budget} | {label} | {split} | {ppl_r:.2f} | {ppl_u:.2f} | {ppl_r / ppl_u:.3f} | "
                f"{lo:.3f} - {hi:.3f} | {float((ratios < 1).double().mean()):.3f} | "
                f"{float((ratios <= 0.9).double().mean()):.3f} |"
            )
            print(md[-1], flush=True)
    md += ["", f"Command: `{' '.join(['python -m benchmarks.ppl_spread', *sys.argv[1:]])}`"]
    Path(args.out).write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
