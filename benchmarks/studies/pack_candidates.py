"""How to pack a kept mix with GPTQ: from the candidates the allocation judged (rounded on the inputs of
the budget's uniform start: the product's default), by a new sequential GPTQ pass on the inputs the mix
itself gives, or by whichever of the two the KL on the check's calibration windows prefers
(`InfoQConfig(reround=True)`).

    python -m benchmarks.studies.pack_candidates     # ~20 min, 2 CPU cores; results/pack_candidates_smollm2.md

SmolLM2-135M, the product's setup (32x128 calibration tokens, the InfoQ search on the first 4 windows
with seeds 0, 1, 2, group 64, candidates {2,3,4,8}, the ILP on GPTQ-rescaled costs, the whole-model
check on the first 8 windows; leftovers bfloat16). The allocation kept by the pipeline is packed both
ways; dev windows choose, test windows only report.
"""

from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

import torch

from infoq_hf import InfoQConfig, quantizable_layers, quantize_model
from infoq_hf.pipeline import quantize_with_infoq
from infoq_hf.quant.apply import cast_float_leftovers

from .. import common

BITS = (2, 3, 4, 8)
SKIP = ["lm_head"]
ROUNDINGS = ("start inputs", "own inputs")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", type=float, nargs="+", default=[2.5, 3.5])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="benchmarks/results/pack_candidates_smollm2.md")
    args = p.parse_args()
    model, _, calib, dev, test = common.smollm2_data(32, 16, 32)
    scheme = common.gptq_scheme(64)
    names = list(quantizable_layers(model, skip_modules=SKIP))
    starts = common.CandidatesByStart(model, {n: BITS for n in names}, calib, scheme)
    rows, dev_ppl = [], {}
    tables = {seed: common.probed_smollm2_table(model, calib, seed) for seed in args.seeds}
    for budget in args.budgets:  # (the budgets' uniform starts differ: one candidate pass each)
        for seed, table in tables.items():
            candidates = starts.for_budget(table, budget)
            config = InfoQConfig(
                bits=list(BITS),
                budget={"avg_bits": budget},
                group_size=64,
                calibration=calib,
                search_samples=4,
                reround=True,
            )
            result = quantize_with_infoq(
                copy.deepcopy(model), config, table=table, candidates=candidates, skip_modules=SKIP, progress=False
            )
            r = result.policy.report.refinement
            if not r.kl_roundings:
                kept = f"the check kept {r.kept} (its candidates are sequential GPTQ's)"
                rows.append(f"| {budget} | {seed} | - | {kept} | - | - | - |")
                continue
            ppl = {}
            for how in ROUNDINGS:
                m = copy.deepcopy(model)
                if how == "start inputs":
                    quantize_model(m, result.policy, scheme=scheme, skip_modules=SKIP, candidates=candidates)
                else:
                    quantize_model(m, result.policy, scheme=scheme, skip_modules=SKIP, calibration=calib)
                cast_float_leftovers(m, torch.bfloat16)
                ppl[how] = (common.perplexity(m, dev), common.perplexity(m, test))
            choice = ppl[r.rounding_kept]
            for how, value in (*((h, ppl[h]) for h in ROUNDINGS), ("KL's choice", choice)):
                dev_ppl.setdefault((budget, how), []).append(value[0])
            kl = r.kl_roundings
            rows.append(
                f"| {budget} | {seed} | {kl['start inputs']:.4g} / {kl['own inputs']:.4g} | {r.rounding_kept} | "
                + " | ".join(f"{ppl[h][0]:.2f} / {ppl[h][1]:.2f}" for h in ROUNDINGS)
                + f" | {choice[0]:.2f} / {choice[1]:.2f} |"
            )
            print(rows[-1], flush=True)
    means = [f"| {budget} | {how} | {statistics.mean(v):.2f} |" for (budget, how), v in sorted(dev_ppl.items())]
    text = "\n".join(
        [
            "# Packing a kept mix: GPTQ's candidates, a sequential pass on its own inputs, or the KL's choice",
            "",
            f"`python -m benchmarks.studies.pack_candidates`; SmolLM2-135M, the product's setup (see the module "
            f"doc), dev 16x128 / test 32x128 tokens; {common.machine()}.",
            "",
            "| budget | search seed | check-window KL: start inputs / own inputs | KL prefers | "
            "start inputs (candidates): dev / test ppl | own inputs (sequential): dev / test ppl | "
            "KL's choice: dev / test ppl |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Mean dev perplexity over the seeds:",
            "",
            "| budget | packed from | mean dev ppl |",
            "|---|---|---|",
            *means,
            "",
        ]
    )
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
