"""torch's CPU int4 kernel in each input dtype, beside the float layer and the exact path; in
bfloat16, the kernel against a dense matmul of the dequantized layout as the rows grow; in float32, the
compiled kernel on the bit stream (`stream_kernels`) against dequantizing and a float32 matmul.

    python -m benchmarks.kernel_dtypes      # ~2 min; writes benchmarks/results/kernel_dtypes.md

Why float32 inputs do not take it: `_weight_int4pack_mm_for_cpu`
takes float32 inputs, but is it fast there? And from how many rows (prefill) is rebuilding the weight
for a dense matmul faster than the kernel (`kernels.DENSE_FROM_ROWS`)? And up to how many float32 rows
does the stream kernel beat dequantize + matmul (`stream_kernels.LINEAR_MAX_ROWS`)? SmolLM2-135M's
layer shapes, a 4-bit packed layer (group 64; 3-bit too for the stream kernel); each time the best of
`--rounds` medians of `--reps` calls, all in one run, so the ratios are what to read.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from infoq_hf.quant import stream_kernels
from infoq_hf.quant.kernels import DENSE_FROM_ROWS, build_int4_layout, dense_weight_from_int4_layout, int4_kernel_mm
from infoq_hf.quant.modules import QuantLinear

from . import common

SHAPES = [(576, 576), (1536, 576), (576, 1536)]  # (out, in): attention, gate/up, down
ROWS = (16, 32, 64, 128, 256, 1024)
FLOAT32_ROWS = (1, 2, 4, 8, 16, 32, 128)


def timed(fn, reps: int, rounds: int) -> float:
    """Milliseconds per call: the best over `rounds` of the median of `reps` calls."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        samples = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
        best = min(best, statistics.median(samples))
    return 1e3 * best


def exact_path(packed: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, packed.dequantized_weight(x.dtype))


def dense_path(x: torch.Tensor, layout) -> torch.Tensor:
    return F.linear(x, dense_weight_from_int4_layout(layout))


def stream_path(packed: QuantLinear, x: torch.Tensor) -> torch.Tensor:
    zero, scale = packed.weight_zero_point, packed.weight_scale
    return stream_kernels.linear(x, packed.weight_packed, scale, zero, packed.w_bits, 64)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default="benchmarks/results/kernel_dtypes.md")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    rows, many, float32 = [], [], []
    for out_f, in_f in SHAPES:
        layer = torch.nn.Linear(in_f, out_f, bias=False)
        packed = QuantLinear.from_float(layer, w_bits=4, group_size=64)
        bf16 = build_int4_layout(packed.codes(), packed.weight_scale, packed.weight_zero_point, 4, 64, torch.bfloat16)
        # the library builds layouts for bf16/fp16 only; the kernel itself takes float32 scales and inputs
        layouts = {torch.bfloat16: bf16, torch.float32: replace(bf16, scale_zero=bf16.scale_zero.float())}
        for dtype, layout in layouts.items():
            weight = layer.weight.detach().to(dtype)
            for batch in (1, 8):
                x = torch.randn(batch, in_f, dtype=dtype)
                kernel = timed(partial(int4_kernel_mm, x, layout), args.reps, args.rounds)
                dense = timed(partial(F.linear, x, weight), args.reps, args.rounds)
                exact = timed(partial(exact_path, packed, x), args.reps, args.rounds)
                rows.append((f"{out_f}x{in_f}", str(dtype).removeprefix("torch."), batch, kernel, dense, exact))
                print(rows[-1], flush=True)
        weight = layer.weight.detach().bfloat16()
        for batch in ROWS:
            x = torch.randn(batch, in_f, dtype=torch.bfloat16)
            kernel = timed(partial(int4_kernel_mm, x, bf16), args.reps, args.rounds)
            dense = timed(partial(dense_path, x, bf16), args.reps, args.rounds)
            floats = timed(partial(F.linear, x, weight), args.reps, args.rounds)
            many.append((f"{out_f}x{in_f}", batch, kernel, dense, floats))
            print(many[-1], flush=True)
        if stream_kernels.load() is None:
            continue
        weight = layer.weight.detach()
        for bits in (4, 3):
            packed = QuantLinear.from_float(layer, w_bits=bits, group_size=64)
            for batch in FLOAT32_ROWS:
                x = torch.randn(batch, in_f)
                stream = timed(partial(stream_path, packed, x), args.reps, args.rounds)
                exact = timed(partial(exact_path, packed, x), args.reps, args.rounds)
                floats = timed(partial(F.linear, x, weight), args.reps, args.rounds)
                float32.append((f"{out_f}x{in_f}", bits, batch, stream, exact, floats))
                print(float32[-1], flush=True)
    lines = [
        "# torch's int4 kernel by input dtype (decode shapes of SmolLM2-135M)",
        "",
        f"`python -m benchmarks.kernel_dtypes`; {common.machine()}, {torch.get_num_threads()} torch threads.",
        "",
        "| layer (out x in) | dtype | rows | int4 kernel ms | float layer ms | exact path ms | kernel / float |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {s} | {d} | {b} | {k:.4f} | {f:.4f} | {e:.4f} | {k / f:.2f}x |" for s, d, b, k, f, e in rows]
    faster = [b for b in ROWS if all(d < k for _, rb, k, d, _ in many if rb == b)]
    lines += [
        "",
        "## bfloat16, many rows: the kernel against a dense matmul of the dequantized layout",
        "",
        f"The layer switches to the dense path from `DENSE_FROM_ROWS` = {DENSE_FROM_ROWS} rows; in this run the",
        f"dense path was faster on every shape from {min(faster) if faster else 'none'} of the rows measured",
        f"({', '.join(map(str, ROWS))}) on.",
        "",
        "| layer (out x in) | rows | int4 kernel ms | dense path ms | float layer ms | dense path / kernel |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {s} | {b} | {k:.4f} | {d:.4f} | {f:.4f} | {d / k:.2f}x |" for s, b, k, d, f in many]
    if float32:
        slower = [b for b in FLOAT32_ROWS if any(st >= e for _, _, rb, st, e, _ in float32 if rb == b)]
        lines += [
            "",
            "## float32: the stream kernel against dequantize + matmul",
            "",
            f"Layers take the stream kernel below `LINEAR_MAX_ROWS` = {stream_kernels.LINEAR_MAX_ROWS} rows; in this "
            f"run it was slower than dequantize + matmul on some shape from {min(slower) if slower else 'none'} of "
            f"the rows measured ({', '.join(map(str, FLOAT32_ROWS))}) on. The float layer's weight stays in cache "
            "between calls here; in a model every layer's weight comes from memory, four bytes per weight against "
            "the stream's bits / 8.",
            "",
            "| layer (out x in) | bits | rows | stream kernel ms | dequantize + matmul ms | float layer ms "
            "| stream / dequantize + matmul |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {s} | {bits} | {b} | {st:.4f} | {e:.4f} | {f:.4f} | {st / e:.2f}x |" for s, bits, b, st, e, f in float32
        ]
    text = "\n".join(lines) + "\n"
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
