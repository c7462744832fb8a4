"""InfoQ's probe width when the candidates start above it: the GGUF setting (widths {4, 5, 8}).

    python -m benchmarks.studies.probe_width_gguf   # ~8 min on 2 CPU cores: results/probe_width_gguf_smollm2.md

SmolLM2-135M with `benchmarks.gguf_llamacpp`'s InfoQ settings (candidates 4/5/8, symmetric, groups of
32, the embedding a layer of the allocation, GPTQ from 32x128 calibration tokens, search on the first
4), searched with 3-bit and with 4-bit probes (seed 0), packed through `quantize_with_infoq` at two
average budgets between the candidates. Perplexity on the 16 dev windows, in torch (the GGUF benchmark
measures the same models in llama.cpp on test windows). Dev data only: this study chooses a default.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from infoq_hf import InfoQConfig, quantize_with_infoq, search
from infoq_hf.pipeline.data import first_samples

from .. import common

BITS = (4, 5, 8)
GROUP_SIZE = 32
SKIP = ["lm_head"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--probe-bits", type=int, nargs="+", default=[3, 4])
    p.add_argument("--budgets", type=float, nargs="+", default=[4.5, 5.5])
    p.add_argument("--out", default="benchmarks/results/probe_width_gguf_smollm2.md")
    args = p.parse_args()
    model, _, calib, dev, _ = common.smollm2_data(32, 16, 0)
    kw = dict(group_size=GROUP_SIZE, symmetric=True, skip_modules=SKIP, seed=0, **common.PROBED_CALIBRATED)
    tables = {
        b: search(model, first_samples(calib, 4), bits=BITS, embeddings=True, probe_bits=b, progress=False, **kw)
        for b in args.probe_bits
    }
    names = list(next(iter(tables.values())).layers)
    starts = common.CandidatesByStart(
        model, {n: BITS for n in names}, calib, common.gptq_scheme(GROUP_SIZE, symmetric=True)
    )
    base = dict(
        bits=list(BITS),
        group_size=GROUP_SIZE,
        symmetric=True,
        quantize_embeddings=True,
        calibration=calib,
        search_samples=4,
        float_dtype="float32",
        seed=0,
    )
    ppl = {}
    for budget in args.budgets:
        for probe_bits, table in tables.items():
            packed = copy.deepcopy(model)
            config = InfoQConfig(**base, budget={"avg_bits": budget})
            candidates = starts.for_budget(table, budget)
            quantize_with_infoq(packed, config, table=table, candidates=candidates, skip_modules=SKIP, progress=False)
            ppl[probe_bits, budget] = common.perplexity(packed, dev)
            print(f"probes at {probe_bits} bits, {budget} avg bits: dev ppl {ppl[probe_bits, budget]:.2f}", flush=True)
    lines = [
        f"# InfoQ's probe width with candidates {{4, 5, 8}} (SmolLM2-135M, GGUF settings, {common.machine()})",
        "",
        "Command: `python -m benchmarks.studies.probe_width_gguf`",
        "",
        "Dev perplexity (16x128 tokens, torch) of the pipeline's allocation; seed 0.",
        "",
        "| probes at | " + " | ".join(f"{b:g} avg bits" for b in args.budgets) + " |",
        "|---|" + "---|" * len(args.budgets),
    ]
    for probe_bits in args.probe_bits:
        lines.append(f"| {probe_bits} bits | " + " | ".join(f"{ppl[probe_bits, b]:.2f}" for b in args.budgets) + " |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
