"""Search cost on SmolLM2-135M: InfoQ with and without the prefix cache, and HAWQ, same data.

    python -m benchmarks.studies.probe_cost            # layers of every 5th decoder block, 2 bits

Probing one layer per block spread over the depth keeps the run short while giving the cache
the same average saving as probing all 210 layers (each block's 7 layers share its prefix).
"Layer evals" counts quantizable-layer forward calls actually computed (replayed blocks are free).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from infoq_hf import quantizable_layers, search

from .. import common


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--every", type=int, default=5, help="probe the layers of every N-th decoder block")
    p.add_argument("--calib", type=int, default=4)
    p.add_argument("--bits", default="2")
    p.add_argument("--out", default="benchmarks/results/probe_cost_smollm2.md")
    args = p.parse_args(argv)
    model, _, calib, _, _ = common.smollm2_data(args.calib, 0, 0)
    bits = [int(b) for b in args.bits.split(",")]
    keep = re.compile(r"model\.layers\.(\d+)\..*")
    skip = ["lm_head"] + [
        n for n in quantizable_layers(model) if not (m := keep.fullmatch(n)) or int(m.group(1)) % args.every
    ]
    kw = dict(bits=bits, group_size=64, skip_modules=skip, progress=False)
    rows = []
    for label, method, extra in (
        ("infoq, prefix cache", "infoq", common.PROBED_CALIBRATED),
        ("infoq, no cache (the paper's count)", "infoq", {**common.PROBED_CALIBRATED, "prefix_cache": False}),
        ("hawq (8 Hutchinson samples)", "hawq", {}),
    ):
        table = search(model, calib, method=method, **kw, **extra)
        c = table.meta["cost"]
        rows.append(
            f"| {label} | {len(table.layers)} | {c['wall_s']:.1f} | {c['forward_passes']} | {c['layer_evals']} |"
        )
        print(rows[-1], flush=True)
    text = "\n".join(
        [
            f"SmolLM2-135M search cost, layers of every {args.every}th block, "
            f"bits {bits}, {args.calib}x128 calibration "
            f"tokens; {common.machine()}",
            "",
            "| run | layers | wall s | forward passes | layer evals |",
            "|---|---|---|---|---|",
            *rows,
        ]
    )
    print(text)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
