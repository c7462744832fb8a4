"""On which inputs to round GPTQ's candidates when the budget lies between two widths: those of the
uniform configuration just under the budget (the floor width) or just over it (the ceiling width).

    python -m benchmarks.studies.candidate_inputs   # ~25 min, 2 CPU cores; results/candidate_inputs_smollm2.md

SmolLM2-135M, the product's setup (32x128 calibration tokens, the InfoQ search on the first 4 windows,
group 64, candidates {2,3,4,8}, the ILP on GPTQ-rescaled costs, packed from the candidates; leftovers
float32). For each search seed and budget, the candidates are rounded once on each uniform
configuration's inputs; the costs, the ILP's allocation and the packed weights all come from them.
Dev windows choose, test windows only report.
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time
from pathlib import Path

from infoq_hf import Budget, allocate, quantizable_layers, quantize_model
from infoq_hf.allocation import uniform_start
from infoq_hf.quant.gptq import gptq_candidates
from infoq_hf.sensitivity.rounding_costs import with_gptq_costs

from .. import common

BITS = (2, 3, 4, 8)
SKIP = ["lm_head"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", type=float, nargs="+", default=[2.5, 3.5])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", default="benchmarks/results/candidate_inputs_smollm2.md")
    args = p.parse_args()
    model, _, calib, dev, test = common.smollm2_data(32, 16, 32)
    scheme = common.gptq_scheme(64)
    names = list(quantizable_layers(model, skip_modules=SKIP))
    rows, dev_ppl = [], {}
    for seed in args.seeds:
        table = common.probed_smollm2_table(model, calib, seed)
        for budget in args.budgets:
            floor = uniform_start(table, Budget(avg_bits=budget))
            above = min(b for b in BITS if b > max(floor.values()))
            for label, start in (("floor", floor), ("ceiling", {n: above for n in names})):
                started = time.perf_counter()
                candidates = gptq_candidates(model, {n: BITS for n in names}, calib, scheme=scheme, prefix_bits=start)
                seconds = time.perf_counter() - started
                policy = allocate(with_gptq_costs(table, candidates), Budget(avg_bits=budget))
                m = copy.deepcopy(model)
                quantize_model(m, policy, scheme=scheme, skip_modules=SKIP, candidates=candidates)
                ppl_dev, ppl_test = common.perplexity(m, dev), common.perplexity(m, test)
                width = max(start.values())
                inputs = f"{label} (uniform {width}-bit)"
                cells = (budget, seed, inputs, f"{seconds:.0f}", f"{ppl_dev:.2f}", f"{ppl_test:.2f}")
                rows.append("| " + " | ".join(map(str, cells)) + " |")
                dev_ppl.setdefault((budget, inputs), []).append(ppl_dev)
                print(rows[-1], flush=True)
    means = [
        f"| {budget} | {label} | {statistics.mean(v):.2f} | {math.exp(statistics.mean(math.log(x) for x in v)):.2f} |"
        for (budget, label), v in sorted(dev_ppl.items())
    ]
    text = "\n".join(
        [
            "# GPTQ candidates rounded on the floor or the ceiling width's inputs",
            "",
            f"`python -m benchmarks.studies.candidate_inputs`; SmolLM2-135M, the product's setup (see the module "
            f"doc), dev 16x128 / test 32x128 tokens; {common.machine()}.",
            "",
            "| budget | search seed | candidates rounded on | candidates s | dev ppl | test ppl |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
            "Dev perplexity over the seeds:",
            "",
            "| budget | inputs | mean | geometric mean |",
            "|---|---|---|---|",
            *means,
            "",
        ]
    )
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
