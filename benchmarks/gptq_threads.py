"""GPTQ's column sweep with one intra-op thread against all of the process's threads.

    python -m benchmarks.gptq_threads        # about a minute on 2 CPU cores

The sweep (`quant.gptq.gptq_quantize_widths`) is a loop of vector operations over the rows of every
width stacked; the lazy block updates are one matrix product per width. This times it on SmolLM2-135M's
layer shapes (random weights, Hessians of random inputs) at one width and at the candidate widths
{2,3,4,8}, with `torch.set_num_threads(1)` and with the process's default thread count, and checks that
both give the same codes and scales. Writes benchmarks/results/gptq_threads.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from infoq_hf.quant.gptq import gptq_quantize_widths
from infoq_hf.quant.quantizer import WeightScheme

from . import common

# SmolLM2-135M: q/o 576x576, k/v 192x576, gate/up 1536x576, down 576x1536 ([out, in])
SHAPES = {"q_proj / o_proj": (576, 576), "k_proj / v_proj": (192, 576), "gate / up": (1536, 576), "down": (576, 1536)}


def timed(weight, hessian, schemes, threads: int, repeats: int):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        start = time.perf_counter()
        for _ in range(repeats):
            result = gptq_quantize_widths(weight, hessian, schemes)
        return (time.perf_counter() - start) / repeats, result
    finally:
        torch.set_num_threads(before)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    rows = []
    for label, (out, cols) in SHAPES.items():
        weight = torch.randn(out, cols)
        x = torch.randn(4096, cols)
        hessian = 2 * x.T @ x / x.shape[0]
        for widths in ([3], [2, 3, 4, 8]):
            schemes = [WeightScheme(b, 64, False, False) for b in widths]
            timed(weight, hessian, schemes, 1, 1)  # warm-up
            one, a = timed(weight, hessian, schemes, 1, args.repeats)
            many, b = timed(weight, hessian, schemes, threads, args.repeats)
            same = all(torch.equal(x.codes, y.codes) and torch.equal(x.scale, y.scale) for x, y in zip(a, b))
            rows.append((label, f"{out}x{cols}", widths, one, many, same))
            print(rows[-1], flush=True)
    lines = [
        f"# GPTQ sweep: one thread vs {threads} ({common.machine()})",
        "",
        "Command: `python -m benchmarks.gptq_threads`",
        "",
        "SmolLM2-135M's layer shapes, random weights and Hessians (4096 random inputs), group 64, asymmetric; "
        f"mean of {args.repeats} runs after a warm-up.",
        "",
        f"| layers | [out, in] | widths | 1 thread s | {threads} threads s | speed-up | same codes and scales |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, shape, widths, one, many, same in rows:
        lines.append(
            f"| {label} | {shape} | {','.join(map(str, widths))} | {one:.3f} | {many:.3f} | {one / many:.2f}x | "
            f"{'yes' if same else 'NO'} |"
        )
    out = Path(args.out or Path(__file__).parent / "results" / "gptq_threads.md")
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
