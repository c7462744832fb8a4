"""Does the clipping search (each group's range shrunk to the ratio with the least squared error) help
GPTQ's rounding, and what does it do to mixes? Dev data only: it chooses `clip_search`'s default.

    python -m benchmarks.studies.clip_search   # ~30 min on 2 CPU cores; results/clip_search_smollm2.md

SmolLM2-135M, the main job's settings (32x128 calibration tokens, search on the first 4 windows,
group 64, candidates {2,3,4,8}, GPTQ rounding), the weights as loaded (`--jitter N`: a copy with
float32-sized noise, another GPTQ path). For each budget: the widest uniform width under it and the
default InfoQ pipeline (ILP, whole-model check), once with `clip_search=False` and once with True;
dev perplexity on the 16x128 dev windows and each run's wall time.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

from infoq_hf import BitPolicy, InfoQConfig, quantizable_layers
from infoq_hf.pipeline import quantize_with_infoq

from .. import common

BITS = (2, 3, 4, 8)
SKIP = ["lm_head"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", type=float, nargs="+", default=[2.5, 3.0, 3.5, 4.0])
    p.add_argument("--jitter", type=int, default=0, help="0: the weights as loaded; N: jittered with seed N")
    p.add_argument("--out", default="benchmarks/results/clip_search_smollm2.md")
    args = p.parse_args()
    model, _, calib, dev, _ = common.smollm2_data(32, 16, 32)
    if args.jitter:
        common.jitter_weights(model, args.jitter, SKIP)
    names = list(quantizable_layers(model, skip_modules=SKIP))
    uniform_done = {}  # (width, clip) -> row: budgets that share a floor width share its uniform run
    rows = []
    for budget in args.budgets:
        width = max(b for b in BITS if b <= budget)
        for clip in (False, True):
            base = dict(bits=list(BITS), group_size=64, calibration=calib, search_samples=4, clip_search=clip)
            runs = {
                f"uniform {width}-bit": InfoQConfig(
                    **base, policy=BitPolicy({n: {"w_bits": width, "a_bits": None} for n in names})
                ),
                "InfoQ (default pipeline)": InfoQConfig(**base, budget={"avg_bits": budget}),
            }
            for label, config in runs.items():
                if label.startswith("uniform") and (width, clip) in uniform_done:
                    rows.append(f"| {budget} | {clip} | {uniform_done[width, clip]}")
                    continue
                packed = copy.deepcopy(model)
                started = time.perf_counter()
                result = quantize_with_infoq(packed, config, skip_modules=SKIP, progress=False)
                seconds = time.perf_counter() - started
                row = (
                    f"{label} | {common.perplexity(packed, dev):.2f} | {common.check_note(result) or '-'} | "
                    f"{seconds:.0f} |"
                )
                if label.startswith("uniform"):
                    uniform_done[width, clip] = row
                rows.append(f"| {budget} | {clip} | {row}")
                print(rows[-1], flush=True)
    text = "\n".join(
        [
            "# The clipping search under GPTQ: dev perplexity",
            "",
            f"`python -m benchmarks.studies.clip_search --budgets {' '.join(map(str, args.budgets))} "
            f"--jitter {args.jitter}`; SmolLM2-135M, the main job's settings (see the module doc), "
            f"{'the weights as loaded' if not args.jitter else f'weights jittered with seed {args.jitter}'}; "
            f"{common.machine()}. Wall s: the whole quantization (GPTQ candidates, search, check, packing).",
            "",
            "| budget | clip_search | allocation | dev perplexity | whole-model check | wall s |",
            "|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
