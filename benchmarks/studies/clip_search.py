"""Does the clipping search (each group's range shrunk to the ratio with the least squared error) help
GPTQ's rounding, and what does it do to mixes? Dev data only: it chooses `clip_search`'s default.

    python -m benchmarks.studies.clip_search   # ~30 min on 2 CPU cores; results/clip_search_smollm2.md
    python -m benchmarks.studies.clip_search --setting gguf   # ~30 min; results/clip_search_gguf_smollm2.md

SmolLM2-135M, the main job's settings (`--setting main`: 32x128 calibration tokens, search on the first
4 windows, group 64, candidates {2,3,4,8}, GPTQ rounding) or `benchmarks.gguf_llamacpp`'s (`--setting
gguf`: candidates {4,5,8}, symmetric groups of 32, the embedding a layer of the allocation and 8-bit in
the uniform runs, float32 compute), the weights as loaded (`--jitter N`: a copy with float32-sized noise,
another GPTQ path). For each budget: the widest uniform width under it and the default InfoQ pipeline
(ILP, whole-model check), once with `clip_search=False` and once with True (which clips widths up to
`quantizer.CLIP_MAX_BITS`); dev perplexity on the 16x128 dev windows and each run's wall time.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

from infoq_hf import BitPolicy, InfoQConfig, quantizable_layers
from infoq_hf.pipeline import quantize_with_infoq

from .. import common

SKIP = ["lm_head"]
SETTINGS = {
    "main": dict(bits=[2, 3, 4, 8], group_size=64),
    "gguf": dict(bits=[4, 5, 8], group_size=32, symmetric=True, quantize_embeddings=True, float_dtype="float32"),
}
# gguf: the average widths whose files match Q4_0 / Q5_0 / Q8_0 (benchmarks.gguf_llamacpp --avg-bits match)
DEFAULT_BUDGETS = {"main": [2.5, 3.0, 3.5, 4.0], "gguf": [4.84, 5.63, 7.997]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--setting", choices=sorted(SETTINGS), default="main")
    p.add_argument("--budgets", type=float, nargs="+", help="default: the setting's (see DEFAULT_BUDGETS)")
    p.add_argument("--jitter", type=int, default=0, help="0: the weights as loaded; N: jittered with seed N")
    p.add_argument("--out", help="default: results/clip_search_smollm2.md, or clip_search_gguf_smollm2.md")
    args = p.parse_args()
    args.budgets = args.budgets or DEFAULT_BUDGETS[args.setting]
    suffix = "" if args.setting == "main" else f"_{args.setting}"
    args.out = args.out or f"benchmarks/results/clip_search{suffix}_smollm2.md"
    setting = SETTINGS[args.setting]
    gguf = args.setting == "gguf"
    model, _, calib, dev, _ = common.smollm2_data(32, 16, 32)
    if args.jitter:
        common.jitter_weights(model, args.jitter, SKIP)
    names = list(quantizable_layers(model, skip_modules=SKIP, embeddings=gguf))
    embedding = model.get_input_embeddings()
    uniform_done = {}  # (width, clip) -> row: budgets that share a floor width share its uniform run
    rows = []
    for budget in args.budgets:
        width = max(b for b in setting["bits"] if b <= budget)
        # the GGUF benchmark's uniform controls keep the embedding at 8 bits
        widths = {n: 8 if gguf and model.get_submodule(n) is embedding else width for n in names}
        for clip in (False, True):
            base = dict(**setting, calibration=calib, search_samples=4, clip_search=clip)
            runs = {
                f"uniform {width}-bit": InfoQConfig(
                    **base, policy=BitPolicy({n: {"w_bits": b, "a_bits": None} for n, b in widths.items()})
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
            f"`python -m benchmarks.studies.clip_search --setting {args.setting} --budgets "
            f"{' '.join(map(str, args.budgets))} --jitter {args.jitter}`; SmolLM2-135M, the {args.setting} "
            "settings (see the module doc), "
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
