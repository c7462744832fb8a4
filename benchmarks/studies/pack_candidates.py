"""How to pack an allocation with GPTQ: from the candidates the allocation judged (the product), or by a
new sequential GPTQ pass on the inputs the allocation itself gives.

    python -m benchmarks.studies.pack_candidates     # ~15 min on 2 CPU cores; writes results/pack_candidates_smollm2.md

SmolLM2-135M, the product's setup (32x128 calibration tokens, the InfoQ search on the first 4 windows,
group 64, candidates {2,3,4,8}, GPTQ candidates on the inputs of the budget's uniform start, the ILP on
GPTQ-rescaled costs; leftovers float32). Each budget's ILP allocation and its uniform start are packed both ways; dev
windows choose, test windows only report.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

from infoq_hf import BitPolicy, Budget, allocate, quantizable_layers, quantize_model, search
from infoq_hf.allocation import uniform_start
from infoq_hf.pipeline.data import first_samples
from infoq_hf.quant.gptq import gptq_candidates
from infoq_hf.quant.scheme import PackingScheme
from infoq_hf.sensitivity.rounding_costs import with_gptq_costs

from .. import common

BITS = (2, 3, 4, 8)
SKIP = ["lm_head"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", type=float, nargs="+", default=[3.0, 3.5])
    p.add_argument("--out", default="benchmarks/results/pack_candidates_smollm2.md")
    args = p.parse_args()
    model, _, calib, dev, test = common.smollm2_data(32, 16, 32)
    scheme = PackingScheme(group_size=64, rounding="gptq")
    table = search(model, first_samples(calib, 4), bits=BITS, group_size=64, skip_modules=SKIP, seed=0)
    names = list(quantizable_layers(model, skip_modules=SKIP))

    def evaluate(policy, candidates):
        out = []
        for how in ("candidates", "sequential GPTQ"):
            m = copy.deepcopy(model)
            started = time.perf_counter()
            if how == "candidates":
                quantize_model(m, policy, scheme=scheme, skip_modules=SKIP, candidates=candidates)
            else:
                quantize_model(m, policy, scheme=scheme, skip_modules=SKIP, calibration=calib)
            seconds = time.perf_counter() - started
            out.append((how, seconds, common.perplexity(m, dev), common.perplexity(m, test)))
        return out

    rows = []
    for budget in args.budgets:
        start = uniform_start(table, Budget(avg_bits=budget))
        candidates = gptq_candidates(model, {n: BITS for n in names}, calib, scheme=scheme, prefix_bits=start)
        ilp = allocate(with_gptq_costs(table, candidates), Budget(avg_bits=budget))
        for label, policy in (("ILP", ilp), ("uniform start", BitPolicy(start))):
            for how, seconds, ppl_dev, ppl_test in evaluate(policy, candidates):
                rows.append(f"| {budget} | {label} | {how} | {seconds:.0f} | {ppl_dev:.2f} | {ppl_test:.2f} |")
                print(rows[-1], flush=True)
    text = "\n".join(
        [
            "# Packing an allocation: GPTQ's candidates or a new sequential pass",
            "",
            f"`python -m benchmarks.studies.pack_candidates`; SmolLM2-135M, the product's setup (see the module doc), "
            f"dev 16x128 / test 32x128 tokens; {common.machine()}.",
            "",
            "| budget | allocation | packed from | packing s | dev ppl | test ppl |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
