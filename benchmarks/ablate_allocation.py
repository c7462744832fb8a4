"""Why do mixed allocations lose to uniform 3-bit on SmolLM2? Two ablations on the cached tables.

    python -m benchmarks.compare --model smollm2     # first: computes and caches the tables
    python -m benchmarks.ablate_allocation

(a) candidates {2,3,4} only: the 8-bit choice scores 0 by construction (it is the reference),
    so the ILP can buy 8 bits for the small k/v projections and pay with 2-bit MLPs;
(b) InfoQ without the 1/b factor (scores multiplied back by b).
Perplexity on the same held-out tokens as benchmarks.compare.
"""

from __future__ import annotations

import copy
from pathlib import Path

from infoq_hf import Budget, allocate, quantize_model
from infoq_hf.sensitivity import SensitivityTable

from . import common


def main():
    model, _, calib, _, test = common.smollm2_data(4, 0, 32)
    tables = {m: SensitivityTable.load(f"benchmarks/results/tables/smollm2_{m}_c{len(calib)}_s0.json")
              for m in ("infoq", "hawq", "weight_mse")}
    no_inv = SensitivityTable.from_dict(tables["infoq"].to_dict())
    for info in no_inv.layers.values():
        info["w"] = {b: s * b for b, s in info["w"].items()}
    variants = [(f"{m}, candidates {{2,3,4}}", t, {"bits": [2, 3, 4]}) for m, t in tables.items()]
    variants.append(("infoq without 1/b, candidates {2,3,4,8}", no_inv, {}))
    rows = []
    for label, table, kw in variants:
        policy = allocate(table, Budget(avg_bits=3.0), **kw)
        m = copy.deepcopy(model)
        quantize_model(m, policy, group_size=64, skip_modules=["lm_head"])
        rows.append(f"| {label} | {policy.report.avg_bits:.3f} | {common.perplexity(m, test):.2f} |")
        print(rows[-1], flush=True)
    text = "\n".join([f"SmolLM2-135M at 3.0 average bits, allocation ablations on the cached tables; perplexity on "
                      f"32x128 held-out tokens; {common.machine()}", "",
                      "| allocation | avg bits | perplexity |", "|---|---|---|", *rows])
    print(text)
    Path("benchmarks/results/ablate_allocation_smollm2.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
