"""Choose InfoQ's `change_power` (alpha_l = D^p / t2 at the probe width) by allocation quality on DEV windows.

    python -m benchmarks.studies.tune_change_power

Takes the calibrated SmolLM2 table cached by `benchmarks.compare --model smollm2` with p = 2 (run
`python -m benchmarks.compare --model smollm2` with `change_power` 2 first), recovers each
layer's information change D(l, b0) = sqrt(alpha_l * t2(l, b0)) from it, rebuilds the costs for each p,
allocates 4.0 and 3.0 average bits by the ILP (no refinement) and reports perplexity on the first 16 dev
windows of the evaluation works (never the test windows, which come after them).
"""

from __future__ import annotations

import argparse
import copy
import math
from pathlib import Path

from infoq_hf import Budget, allocate, quantize_model
from infoq_hf.sensitivity import SensitivityTable

from .. import common

TABLE = Path("benchmarks/results/tables/smollm2_infoq_probe_bits4_change_power2.0_c1_s0.json")


def main(argv=None):
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args(argv)
    model, _, _, dev, _ = common.smollm2_data(4, 16, 0)
    base = SensitivityTable.load(TABLE)
    b0 = base.meta["options"]["probe_bits"]
    lines = [
        f"change_power by dev perplexity (16x128 dev tokens), SmolLM2-135M, RTN group 64, ILP only; {common.machine()}",
        "",
        "| change_power | 4.0 bits | 3.0 bits |",
        "|---|---|---|",
    ]
    for power in (1.0, 1.5, 2.0):
        table = SensitivityTable.from_dict(base.to_dict())
        for info in table.layers.values():
            change = math.sqrt(info["alpha"] * info["t2"][b0])
            alpha = change**power / info["t2"][b0]
            info["w"] = {b: alpha * info["t2"][b] for b in table.bits}
        ppl = []
        for budget in (4.0, 3.0):
            m = copy.deepcopy(model)
            quantize_model(m, allocate(table, Budget(avg_bits=budget)), group_size=64, skip_modules=["lm_head"])
            ppl.append(common.perplexity(m, dev))
        lines.append(f"| {power} | {ppl[0]:.2f} | {ppl[1]:.2f} |")
        print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    Path("benchmarks/results/tune_change_power_smollm2.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
