"""Does the whole-model check find a mix that beats uniform at an integer budget when it is offered
more than the ILP's one allocation? The ILP adds single-layer costs and under-rates widths below the
budget's uniform start (their errors compound), so the check is offered the ILP's allocations with
those widths' costs multiplied by k (k = 1 is the product's ILP; a large k gives uniform).

    python -m benchmarks.studies.narrow_penalty      # ~25 min on 2 CPU cores; writes results/narrow_penalty_smollm2.md

SmolLM2-135M, the product's setup (32x128 calibration tokens, InfoQ search on the first 4 windows,
group 64, candidates {2,3,4,8}, GPTQ candidates on the uniform start's inputs, packed from them; the
check's KL on the first 8 calibration windows). Dev windows choose; test windows only report.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from infoq_hf import Budget, allocate, quantizable_layers, quantize_model, refine
from infoq_hf.allocation import uniform_start
from infoq_hf.pipeline.data import first_samples
from infoq_hf.quant.gptq import gptq_candidates
from infoq_hf.sensitivity import SensitivityTable
from infoq_hf.sensitivity.rounding_costs import with_gptq_costs

from .. import common

BITS = (2, 3, 4, 8)
SKIP = ["lm_head"]


def penalized(table: SensitivityTable, start: dict[str, int], k: float) -> SensitivityTable:
    """`table` with each layer's costs below its uniform-start width multiplied by `k`."""
    layers = copy.deepcopy(table.layers)
    for name, info in layers.items():
        info["w"] = {b: c * (k if b < start[name] else 1.0) for b, c in info["w"].items()}
    return SensitivityTable(table.method, table.bits, layers, table.meta)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", type=float, nargs="+", default=[3.0, 4.0, 3.5])
    p.add_argument("--factors", type=float, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--out", default="benchmarks/results/narrow_penalty_smollm2.md")
    args = p.parse_args()
    model, _, calib, dev, test = common.smollm2_data(32, 16, 32)
    scheme = common.gptq_scheme(64)
    table = common.probed_smollm2_table(model, calib, 0)
    names = list(quantizable_layers(model, skip_modules=SKIP))
    check = first_samples(calib, 8)
    rows = []
    for budget in args.budgets:
        start = uniform_start(table, Budget(avg_bits=budget))
        candidates = gptq_candidates(model, {n: BITS for n in names}, calib, scheme=scheme, prefix_bits=start)
        costs = with_gptq_costs(table, candidates)
        policies = {f"ilp x{k:g}": allocate(penalized(costs, start, k), Budget(avg_bits=budget)) for k in args.factors}
        first, *others = policies
        judged = refine(
            policies[first],
            model,
            check,
            passes=len(policies) + 1,
            starts={name: policies[name] for name in others},
            gptq=candidates,
            progress=False,
        )
        kls = judged.report.refinement.kl_starts
        uniform_name = next(n for n in kls if n.startswith("uniform"))
        for name, policy in [*policies.items(), (uniform_name, None)]:
            widths = start if policy is None else {n: lb.w_bits for n, lb in policy.items()}
            m = quantize_model(copy.deepcopy(model), widths, scheme=scheme, skip_modules=SKIP, candidates=candidates)
            kl = kls["ilp" if name == first else name]
            narrow = sum(widths[n] < start[n] for n in names)
            row = (
                f"| {budget} | {name} | {narrow} | {kl:.4f} | {common.perplexity(m, dev):.2f} | "
                f"{common.perplexity(m, test):.2f} |"
            )
            rows.append(row)
            print(row, flush=True)
    text = "\n".join(
        [
            "# The whole-model check offered ILP allocations with narrow widths' costs multiplied by k",
            "",
            f"`python -m benchmarks.studies.narrow_penalty`; SmolLM2-135M, the product's setup (see the module doc); "
            f"{common.machine()}.",
            "",
            "| budget | allocation | layers below the uniform start | check KL | dev ppl | test ppl |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
