"""Where do InfoQ's and AutoScheme's allocations spend their bits, and does the 8-bit candidate help?

    python -m benchmarks.studies.widths_by_projection   # ~12 min on 2 CPU cores

The tables go to results/widths_by_projection_smollm2.md.

SmolLM2-135M, the product's setup (32x128 calibration tokens, InfoQ search on the first 4 windows,
group 64, GPTQ candidates on the uniform start's inputs). Part 1: the ILP's widths at 3.5 bits per
projection and block, InfoQ and weight_mse beside AutoScheme's (its JSON from benchmarks/peers/).
Part 2: the whole pipeline (search table, ILP, whole-model check, packing from the candidates) with
candidates {2,3,4} against the product's {2,3,4,8} at 3.5 and 2.5 bits. Dev windows choose; test
windows only report.
"""

from __future__ import annotations

import argparse
import collections
import copy
import json
from pathlib import Path

from infoq_hf import Budget, InfoQConfig, allocate, quantizable_layers, search
from infoq_hf.allocation import uniform_start
from infoq_hf.pipeline import quantize_with_infoq
from infoq_hf.pipeline.data import first_samples
from infoq_hf.quant.gptq import gptq_candidates
from infoq_hf.sensitivity.rounding_costs import with_gptq_costs

from .. import common

BITS = (2, 3, 4, 8)
SKIP = ["lm_head"]
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--autoscheme", default="benchmarks/results/policies/autoscheme_smollm2_3.5.json")
    p.add_argument("--out", default="benchmarks/results/widths_by_projection_smollm2.md")
    args = p.parse_args()
    model, _, calib, dev, test = common.smollm2_data(32, 16, 32)
    names = list(quantizable_layers(model, skip_modules=SKIP))
    tables = {
        m: search(
            model,
            first_samples(calib, 4),
            bits=BITS,
            method=m,
            group_size=64,
            skip_modules=SKIP,
            seed=0,
            **(common.PROBED_CALIBRATED if m == "infoq" else {}),
        )
        for m in ("infoq", "weight_mse")
    }
    budget = Budget(avg_bits=3.5)
    scheme = common.gptq_scheme(64)
    start = uniform_start(tables["infoq"], budget)
    candidates = gptq_candidates(
        model, {n: BITS for n in names}, calib, scheme=scheme, prefix_bits=start, keep_weights=False
    )
    widths = {"AutoScheme": json.loads(Path(args.autoscheme).read_text())["layers"]}
    for method, table in tables.items():
        policy = allocate(with_gptq_costs(table, candidates), budget)
        widths[method] = {n: policy[n].w_bits for n in names}
    lines = [
        "# Widths by projection at 3.5 bits, and the allocation without the 8-bit candidate",
        "",
        f"`python -m benchmarks.studies.widths_by_projection`; SmolLM2-135M, the product's setup; {common.machine()}.",
        "",
        "## The ILP's widths at 3.5 bits (mean over the 30 blocks; then per block, first to last)",
        "",
        "| allocation | " + " | ".join(PROJECTIONS) + " |",
        "|---|" + "---|" * len(PROJECTIONS),
    ]
    for label, w in widths.items():
        means = collections.defaultdict(list)
        for n in names:
            means[n.split(".")[-1]].append(w[n])
        lines.append(f"| {label} | " + " | ".join(f"{sum(means[q]) / len(means[q]):.2f}" for q in PROJECTIONS) + " |")
    lines += ["", "```"]
    for q in PROJECTIONS:
        for label, w in widths.items():
            lines.append(f"{q:10s} {label:11s} " + "".join(str(w[n]) for n in names if n.endswith(q)))
    lines += ["```", "", "## The pipeline with and without the 8-bit candidate (InfoQ, dev / test perplexity)", ""]
    lines += ["| budget | candidates | dev ppl | test ppl | whole-model check |", "|---|---|---|---|---|"]
    for avg in (3.5, 2.5):
        for bits in (BITS, (2, 3, 4)):
            config = InfoQConfig(
                bits=bits, group_size=64, calibration=calib, budget={"avg_bits": avg}, search_samples=4, seed=0
            )
            m = copy.deepcopy(model)
            result = quantize_with_infoq(m, config, table=tables["infoq"], skip_modules=SKIP, progress=False)
            row = (
                f"| {avg} | {{{','.join(map(str, bits))}}} | {common.perplexity(m, dev):.2f} | "
                f"{common.perplexity(m, test):.2f} | {common.check_note(result)} |"
            )
            lines.append(row)
            print(row, flush=True)
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
