"""How much one GPTQ pass's perplexity moves with float-level differences, and what GPTQ's dampening does
to that spread.

    python -m benchmarks.studies.gptq_noise      # ~30 min on 2 CPU cores; writes results/gptq_noise_smollm2.md

SmolLM2-135M quantized uniformly at each of `--bits` (group 64, asymmetric, GPTQ on 32x128 calibration tokens,
`lm_head` float), once as loaded and once per jitter seed with every quantized layer's weight multiplied
by (1 + 2^-24 n), n standard normal: differences of the size float32 rounding makes, as another CPU's
kernels or another summation order do. A stable quantizer gives about the same perplexity for every
jitter; GPTQ's column-by-column decisions can instead take another path after one flipped rounding.
Each GPTQ dampening of `--damps` is run the same way. Dev windows choose (the dampening with the lower
mean dev perplexity); test only reports.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import time
from pathlib import Path

from infoq_hf import quantizable_layers, quantize_model

from .. import common

SKIP = ["lm_head"]


def jittered(model, seed: int | None):
    """A copy of `model`, its quantized layers' weights jittered by `common.jitter_weights` (seed None: as is)."""
    copied = copy.deepcopy(model)
    if seed is not None:
        common.jitter_weights(copied, seed, SKIP)
    return copied


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bits", type=int, nargs="+", default=[3, 4])
    p.add_argument("--damps", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3])
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="jitter seeds (besides no jitter)")
    p.add_argument("--out", default="benchmarks/results/gptq_noise_smollm2.md")
    args = p.parse_args()
    model, _, calib, dev, test = common.smollm2_data(32, 16, 32)
    runs = [None, *args.seeds]
    rows = {}
    for bits, damp in itertools.product(args.bits, args.damps):
        for seed in runs:
            quantized = jittered(model, seed)
            started = time.perf_counter()
            quantize_model(
                quantized,
                {n: bits for n in quantizable_layers(quantized, skip_modules=SKIP)},
                scheme=common.gptq_scheme(64),  # the product's GPTQ rounding, its clipping included
                calibration=calib,
                gptq_options={"damp": damp},
                skip_modules=SKIP,
            )
            seconds = time.perf_counter() - started
            rows[bits, damp, seed] = (common.perplexity(quantized, dev), common.perplexity(quantized, test), seconds)
            print(bits, damp, seed, " / ".join(f"{v:.2f}" for v in rows[bits, damp, seed]), flush=True)
    label = {None: "as loaded", **{s: f"jitter {s}" for s in args.seeds}}
    lines = [
        f"# One GPTQ pass under float-level jitter (SmolLM2-135M, uniform, {common.machine()})",
        "",
        "Command: `python -m benchmarks.studies.gptq_noise`",
        "",
        "Group 64, asymmetric, GPTQ (block 128, no act-order) on 32x128 calibration tokens, `lm_head` float;"
        " jitter: every quantized layer's weight times (1 + 2^-24 n), n ~ N(0, 1), seeded. Perplexity on"
        " 16x128 dev and 32x128 test tokens (float 56.73 / 61.83).",
        "",
        "| bits | GPTQ damp | " + " | ".join(label[s] for s in runs) + " | dev mean (min-max) | test mean (min-max) |",
        "|---|---|" + "---|" * len(runs) + "---|---|",
    ]
    for bits, damp in itertools.product(args.bits, args.damps):
        devs = [rows[bits, damp, s][0] for s in runs]
        tests = [rows[bits, damp, s][1] for s in runs]
        cells = [f"{rows[bits, damp, s][0]:.2f} / {rows[bits, damp, s][1]:.2f}" for s in runs]
        lines.append(
            f"| {bits} | {damp:g} | "
            + " | ".join(cells)
            + f" | {statistics.mean(devs):.2f} ({min(devs):.2f}-{max(devs):.2f})"
            + f" | {statistics.mean(tests):.2f} ({min(tests):.2f}-{max(tests):.2f}) |"
        )
    lines += ["", "Cells: dev / test perplexity."]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
