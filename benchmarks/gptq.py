"""GPTQ vs round-to-nearest on SmolLM2-135M, uniform and InfoQ-allocated, group 64.

    python -m benchmarks.gptq             # writes benchmarks/results/gptq_smollm2.md
    python -m benchmarks.gptq --fresh     # also recompute the InfoQ sensitivity table

Data (`common.smollm2_data`): calibration windows from the calibration works (the first 4 of
them are the search and refinement calibration, as in `benchmarks/compare.py` and the demo; GPTQ
uses all `--calib` windows), dev windows from the evaluation works (the RTN/GPTQ default is
chosen on them), test windows after the dev windows (the reported perplexity). The InfoQ rows are
the product's allocation: calibrated costs, ILP, whole-model refinement (`--refine-passes`). Each row quantizes
a fresh copy of the fp32 model; the GPTQ rows report the wall time of the sequential pass, the
process's peak RSS after it, and the largest activation buffer GPTQ held (one block's inputs).
"""

from __future__ import annotations

import argparse
import copy
import resource
import sys
import time
from pathlib import Path

import torch

from infoq_hf import Budget, allocate, compare_with_uniform, quantizable_layers, quantize_model, refine, search
from infoq_hf.defaults import DEFAULT_REFINE_PASSES
from infoq_hf.quant.gptq import GPTQOptions, gptq_quantize_model

from . import common
from .compare import cached_table

SKIP = ["lm_head"]
GROUP = 64
SEARCH_BATCHES = 1  # the search calibration of compare.py and the demo: one batch of 4 x 128 tokens


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calib", type=int, default=32, help="GPTQ calibration windows of 128 tokens (default 32)")
    p.add_argument("--dev", type=int, default=16, help="dev windows, for the choice of the default (default 16)")
    p.add_argument("--eval", type=int, default=32, help="held-out test windows (default 32, as compare.py)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true", help="recompute the cached InfoQ sensitivity table")
    p.add_argument(
        "--refine-passes",
        type=int,
        default=DEFAULT_REFINE_PASSES,
        help=f"refinement moves of the InfoQ allocations (default {DEFAULT_REFINE_PASSES}, as the product: the ILP "
        "or uniform, by whole-model KL)",
    )
    p.add_argument("--uniform-only", action="store_true", help="only the uniform rows (e.g. to compare --calib sizes)")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    out = Path(args.out)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)

    model, _, calib, dev, test = common.smollm2_data(args.calib, args.dev, args.eval)
    search_calib = calib[:SEARCH_BATCHES]
    names = list(quantizable_layers(model, skip_modules=SKIP))

    def infoq_policy(avg_bits: float):  # the table is searched (or read from the cache) when first needed
        table = cached_table(
            out / "tables" / f"smollm2_infoq_calibrated_c{len(search_calib)}_s{args.seed}.json",
            args.fresh,
            lambda: search(
                model,
                search_calib,
                method="infoq",
                **common.PROBED_CALIBRATED,
                bits=(2, 3, 4, 8),
                group_size=GROUP,
                skip_modules=SKIP,
                seed=args.seed,
            ),
        )
        ilp = allocate(table, Budget(avg_bits=avg_bits))
        if not args.refine_passes:  # the product's default: the ILP or uniform, by whole-model KL
            return compare_with_uniform(ilp, model, search_calib, progress=False)
        return refine(ilp, model, search_calib, passes=args.refine_passes, seed=args.seed)

    policies = [("uniform 4-bit", lambda: {n: 4 for n in names}), ("uniform 3-bit", lambda: {n: 3 for n in names})]
    if not args.uniform_only:
        policies += [(f"InfoQ {b} avg bits", lambda b=b: infoq_policy(b)) for b in (4.0, 3.0, 2.5)]

    rss_loaded = peak_rss_mib()
    rows = [
        (
            "fp32 (from Q4_1 GGUF)",
            "-",
            32.0,
            common.perplexity(model, dev),
            common.perplexity(model, test),
            None,
            None,
            None,
        )
    ]
    print(rows[-1], flush=True)
    for label, make_policy in policies:
        policy = make_policy()
        avg = sum(
            model.get_submodule(n).weight.numel() * (policy[n] if isinstance(policy[n], int) else policy[n].w_bits)
            for n in names
        ) / sum(model.get_submodule(n).weight.numel() for n in names)
        for rounding in ("rtn", "gptq"):
            m = copy.deepcopy(model)
            t = time.perf_counter()
            act_mib = None
            if rounding == "gptq":
                report = gptq_quantize_model(
                    m, policy, calib, scheme={"group_size": GROUP}, skip_modules=SKIP, progress=True
                )
                act_mib = report.max_activation_bytes / 2**20
            else:
                quantize_model(m, policy, group_size=GROUP, skip_modules=SKIP)
            wall = time.perf_counter() - t
            rows.append(
                (
                    label,
                    rounding,
                    avg,
                    common.perplexity(m, dev),
                    common.perplexity(m, test),
                    wall,
                    peak_rss_mib() if rounding == "gptq" else None,
                    act_mib,
                )
            )
            print(rows[-1], flush=True)
            del m
            write(out, args, calib, search_calib, rss_loaded, rows, total=2 * len(policies))


def write(out: Path, args, calib, search_calib, rss_loaded: float, rows: list, total: int) -> None:
    """Write the table so far (a run cut short still leaves its finished rows, marked partial)."""
    n_tokens = sum(b["input_ids"].numel() for b in calib)
    header = (
        f"SmolLM2-135M weight-only, asymmetric, group {GROUP}, `lm_head` float; GPTQ damp {GPTQOptions().damp}, "
        "block 128, "
        f"no act-order, calibration {n_tokens // 128}x128 tokens (calibration works); InfoQ policies: default "
        f"search, ILP and {args.refine_passes} refinement passes on {len(search_calib) * 4}x128 calibration "
        f"tokens, candidates {{2,3,4,8}}; "
        f"perplexity on {args.dev}x128 dev and {args.eval}x128 held-out test tokens (evaluation "
        f"works, test after dev); seed {args.seed}; {common.machine()}. The fp32 weights come from a Q4_1 GGUF. "
        f"Peak RSS after loading the model and data: {rss_loaded:.0f} MiB."
    )
    md = [
        "| policy | rounding | avg bits | dev ppl | test ppl | "
        "quantize wall s | peak RSS MiB | largest activation buffer MiB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, rounding, avg, pdev, ptest, wall, rss, act in rows:
        md.append(
            f"| {label} | {rounding} | {avg:.3f} | {pdev:.2f} | {ptest:.2f} | "
            f"{'-' if wall is None else f'{wall:.1f}'} | {'-' if rss is None else f'{rss:.0f}'} | "
            f"{'-' if act is None else f'{act:.1f}'} |"
        )
    done = len(rows) == 1 + total
    partial = [] if done else ["", f"PARTIAL: {len(rows) - 1} of {total} quantized rows so far."]
    command = " ".join(["python -m benchmarks.gptq", *sys.argv[1:]])
    text = "\n".join([header, "", *md, *partial, "", f"Command: `{command}`"])
    if done:
        print(text)
    (out / "gptq_smollm2.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
