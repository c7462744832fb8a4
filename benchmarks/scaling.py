"""How the default pipeline's cost grows with the model: each stage's wall time and the process's peak
memory over Llamas of growing size, as ratios to one uniform 3-bit GPTQ pass on the same model and
data in the same run, and a power-law projection to an 8B Llama on this machine.

    python -m benchmarks.scaling                      # the default sizes: 4 Llamas, 4.9M to 121M linear
                                                      # parameters (estimated 10-15 min on 2 idle CPU cores)
    python -m benchmarks.scaling --sizes 256:4:8000 512:8:16000
    python -m benchmarks.scaling --tiny               # two tiny Llamas: checks the script in about a minute

Models: random-weight Llamas from `transformers.LlamaConfig` (no downloads), one per `--sizes` triple
hidden:layers:vocab (intermediate 8/3 x hidden rounded to 64, heads of width 64, a quarter as many
key/value heads where that divides). Calibration: random token windows (32 x 128 tokens, batches of
4, the demo's setting). Random weights time like trained ones; no quality is measured.

Each size runs twice, each in a fresh child process so that its peak RSS (`ru_maxrss`) is its own: the
default pipeline (`quantize_with_infoq`, candidates {2,3,4,8}, 3.0 average bits, group 64, GPTQ
rounding, search on the first 4 windows, `lm_head` float), whose `summary["times_s"]` gives each
stage's seconds; then one uniform 3-bit GPTQ pass (`quantize_model`) of every layer the pipeline
may quantize. Each stage's time is fitted as c * P^k over the sizes (P: the model's linear-layer
parameters, `lm_head` included since it runs in every forward; least squares on logs) and carried
to Llama-3-8B's shape: an extrapolation, labelled so. Writes benchmarks/results/scaling_<machine>.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import infoq_hf
from infoq_hf import InfoQConfig, quantizable_layers, quantize_model, quantize_with_infoq

from . import common

DEFAULT_SIZES = ("256:4:8000", "512:4:16000", "1024:4:32000", "1024:8:32000")
TINY_SIZES = ("64:2:256", "128:2:512")
BITS = [2, 3, 4, 8]
BUDGET_BITS = 3.0
UNIFORM_BITS = 3
GROUP = 64
SKIP = ["lm_head"]
MIN_FIT_S = 0.05  # a series with a shorter time at some size is not fitted (timer noise, or skipped)
# Llama-3-8B's shape: the projection's target
TARGET = {
    "hidden_size": 4096,
    "num_hidden_layers": 32,
    "vocab_size": 128256,
    "intermediate_size": 14336,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
}


def parse_size(text: str) -> tuple[int, int, int]:
    """'hidden:layers:vocab' -> (hidden, layers, vocab); hidden a multiple of 64 (heads of width 64)."""
    parts = text.split(":")
    try:
        hidden, layers, vocab = (int(p) for p in parts)
    except ValueError:
        hidden = layers = vocab = 0
    if len(parts) != 3 or min(hidden, layers, vocab) <= 0 or hidden % 64:
        raise ValueError(
            f"a size is hidden:layers:vocab with positive integers and hidden a multiple of 64 "
            f"(e.g. 512:4:16000), got {text!r}"
        )
    return hidden, layers, vocab


def llama_shape(hidden: int, layers: int, vocab: int) -> dict:
    """LlamaConfig fields of a size: intermediate 8/3 x hidden rounded to 64, heads of width 64, a quarter
    as many key/value heads where that divides."""
    heads = hidden // 64
    return {
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "vocab_size": vocab,
        "intermediate_size": max(64, round(8 * hidden / 3 / 64) * 64),
        "num_attention_heads": heads,
        "num_key_value_heads": heads // 4 if heads % 4 == 0 else heads,
    }


def build(shape: dict, *, device: str | None = None) -> LlamaForCausalLM:
    """A random-weight Llama of `shape` (seed 0, the caller's random state untouched); on `device` "meta"
    only its shapes."""
    config = LlamaConfig(max_position_embeddings=512, tie_word_embeddings=False, **shape)
    with torch.random.fork_rng(), torch.device(device or "cpu"):
        torch.manual_seed(0)
        return LlamaForCausalLM(config).eval()


def linear_params(model) -> int:
    """Weights of the model's nn.Linear layers (`lm_head` included)."""
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def calibration(vocab: int, windows: int, seq_len: int, batch: int) -> list[dict]:
    ids = torch.randint(0, vocab, (windows, seq_len), generator=torch.Generator().manual_seed(1))
    return common.lm_batches(ids, batch)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def child(mode: str, size: str, windows: int, seq_len: int, batch: int) -> dict:
    """One measurement in this (fresh) process: the default pipeline or one uniform GPTQ pass."""
    baseline = peak_rss_mib()
    model = build(llama_shape(*parse_size(size)))
    batches = calibration(model.config.vocab_size, windows, seq_len, batch)
    row = {
        "size": size,
        "mode": mode,
        "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in model.parameters()),
        "linear_params": linear_params(model),
        "float_bytes": infoq_hf.model_size_bytes(model),
        "rss_baseline_mib": baseline,
        "rss_loaded_mib": peak_rss_mib(),
    }
    started = time.perf_counter()
    if mode == "pipeline":
        config = InfoQConfig(
            bits=BITS,
            budget={"avg_bits": BUDGET_BITS},
            calibration=batches,
            search_samples=4,
            group_size=GROUP,
            rounding="gptq",
            seed=0,
        )
        result = quantize_with_infoq(model, config, skip_modules=SKIP, progress=False)
        row["times_s"] = dict(result.summary["times_s"])
    elif mode == "uniform":
        policy = {name: UNIFORM_BITS for name in quantizable_layers(model, skip_modules=SKIP)}
        # the rounding and clipping the pipeline resolves for GPTQ
        quantize_model(model, policy, scheme=common.gptq_scheme(GROUP), calibration=batches, skip_modules=SKIP)
    else:
        raise ValueError(f"mode is 'pipeline' or 'uniform', got {mode!r}")
    row["wall_s"] = time.perf_counter() - started
    row["peak_rss_mib"] = peak_rss_mib()
    return row


def run_child(mode: str, size: str, windows: int, seq_len: int, batch: int) -> dict:
    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "benchmarks.scaling", "--child", mode, "--sizes", size]
    cmd += ["--calib", str(windows), "--seq-len", str(seq_len), "--batch", str(batch)]
    out = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"the {mode} run of size {size} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def power_fit(x: list[float], y: list[float]) -> tuple[float, float]:
    """(c, k) of y = c * x^k by least squares on log y against log x (two or more distinct x)."""
    if len(x) != len(y) or len(set(x)) < 2 or min(x) <= 0 or min(y) <= 0:
        raise ValueError("a power fit needs positive values at two or more distinct sizes")
    lx, ly = [math.log(v) for v in x], [math.log(v) for v in y]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    k = sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)
    return math.exp(my - k * mx), k


def stage_columns(rows: list[dict]) -> list[str]:
    """Every stage any size ran, in the order they first ran."""
    names: list[str] = []
    for row in rows:
        names += [s for s in row["pipeline"]["times_s"] if s not in names]
    return names


def projection(rows: list[dict], target_linear: int) -> list[tuple[str, float, float, float]]:
    """(series, exponent k, measured range end, projected seconds) for each stage, the total and the
    uniform pass, fitted over the sizes' linear-layer parameters."""
    x = [r["pipeline"]["linear_params"] for r in rows]
    series = {s: [r["pipeline"]["times_s"].get(s, 0.0) for r in rows] for s in stage_columns(rows)}
    series["pipeline total"] = [r["pipeline"]["wall_s"] for r in rows]
    series[f"uniform {UNIFORM_BITS}-bit GPTQ"] = [r["uniform"]["wall_s"] for r in rows]
    out = []
    for name, y in series.items():
        if min(y) < MIN_FIT_S:  # a stage some size skipped, or too short to time: no fit
            out.append((name, float("nan"), max(y), float("nan")))
            continue
        c, k = power_fit(x, y)
        out.append((name, k, max(y), c * target_linear**k))
    return out


def memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def machine_tag() -> str:
    return f"{platform.machine()}_{os.cpu_count()}cpu"


def report(rows: list[dict], args, command: str) -> str:
    stages = stage_columns(rows)
    lines = [
        f"# Scaling of the default pipeline ({common.machine()})",
        "",
        f"Command: `{command}`",
        "",
        f"Random-weight Llamas from configs; {args.calib}x{args.seq_len} random calibration tokens in batches of "
        f"{args.batch}. The default pipeline: candidates {{{','.join(map(str, BITS))}}}, {BUDGET_BITS} average bits, "
        f"group {GROUP}, GPTQ rounding, search on 4 windows, `lm_head` float. The baseline: one uniform "
        f"{UNIFORM_BITS}-bit GPTQ pass of the same layers on the same data. Each run in its own process "
        f"({rows[0]['pipeline']['threads']} torch threads); peak RSS is that process's `ru_maxrss`, float size the "
        "fp32 model's state dict, imports the peak before the model is built (Python, torch, transformers).",
        "",
        "| hidden:layers:vocab | params M | linear params M | "
        + " | ".join(f"{s} s" for s in stages)
        + " | total s | uniform GPTQ s | total / GPTQ | peak RSS MiB | GPTQ peak RSS MiB | float MiB | peak / float "
        "| (peak - imports) / float |",
        "|---" * (len(stages) + 11) + "|",
    ]
    for r in rows:
        p, u = r["pipeline"], r["uniform"]
        float_mib = p["float_bytes"] / 2**20
        cells = [
            r["size"],
            f"{p['params'] / 1e6:.1f}",
            f"{p['linear_params'] / 1e6:.1f}",
            *(f"{p['times_s'][s]:.2f}" if s in p["times_s"] else "-" for s in stages),
            f"{p['wall_s']:.2f}",
            f"{u['wall_s']:.2f}",
            f"{p['wall_s'] / u['wall_s']:.2f}",
            f"{p['peak_rss_mib']:.0f}",
            f"{u['peak_rss_mib']:.0f}",
            f"{float_mib:.0f}",
            f"{p['peak_rss_mib'] / float_mib:.2f}",
            f"{(p['peak_rss_mib'] - p['rss_baseline_mib']) / float_mib:.2f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    target = build(TARGET, device="meta")
    target_linear = linear_params(target)
    target_params = sum(p.numel() for p in target.parameters())
    fits = projection(rows, target_linear)
    lo, hi = (f(r["pipeline"]["linear_params"] for r in rows) for f in (min, max))
    lines += [
        "",
        f"## Projection to Llama-3-8B's shape ({target_params / 1e9:.2f}B parameters, {target_linear / 1e9:.2f}B in "
        f"linear layers) on this machine: an extrapolation",
        "",
        f"Each series fitted as c * P^k over the measured sizes (P: linear-layer parameters, {lo / 1e6:.1f}M to "
        f"{hi / 1e6:.1f}M; least squares on logs, {len(rows)} sizes) and carried to P = {target_linear / 1e9:.2f}B, "
        f"{target_linear / hi:.0f}x past the largest size measured, with the same {args.calib}x{args.seq_len} "
        "calibration tokens. It assumes the measured growth holds that far (memory, caches and the 8B "
        f"model's {TARGET['vocab_size']}-token vocabulary may change it) and that the fp32 model fits in memory "
        f"({target_params * 4 / 2**30:.0f} GiB; this machine has {memory_gib():.0f} GiB).",
        "",
        "| series | exponent k | largest measured s | projected s | projected h |",
        "|---|---|---|---|---|",
    ]
    for name, k, measured, projected in fits:
        if math.isnan(k):
            lines.append(f"| {name} | - (under {MIN_FIT_S} s at some size: not fitted) | {measured:.2f} | - | - |")
        else:
            lines.append(f"| {name} | {k:.2f} | {measured:.2f} | {projected:.0f} | {projected / 3600:.1f} |")
    total, gptq = fits[-2], fits[-1]
    stages_sum = sum(f[3] for f in fits[:-2] if not math.isnan(f[3]))
    if not math.isnan(total[3]) and not math.isnan(gptq[3]):
        lines += [
            "",
            f"Projected pipeline total / projected uniform GPTQ pass: {total[3] / gptq[3]:.2f} (the sum of the "
            f"fitted stages' projections: {stages_sum:.0f} s, {stages_sum / gptq[3]:.2f}x the GPTQ pass).",
        ]
    return "\n".join(lines) + "\n"


def main(argv=None, measure=run_child):
    """The command line; `measure(mode, size, windows, seq_len, batch)` runs one measurement (default: in a
    fresh child process). Returns the report's path."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=None, help=f"hidden:layers:vocab (default {' '.join(DEFAULT_SIZES)})")
    p.add_argument("--tiny", action="store_true", help=f"sizes {' '.join(TINY_SIZES)}: a check in seconds")
    p.add_argument("--calib", type=int, default=32, help="calibration windows (default 32)")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per window (default 128)")
    p.add_argument("--batch", type=int, default=4, help="windows per batch (default 4)")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument(
        "--tag",
        default=None,
        help=f"output file suffix (default the machine, here {machine_tag()}; tiny_ before it with --tiny)",
    )
    p.add_argument("--child", choices=("pipeline", "uniform"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tiny and args.sizes:
        p.error("pass --tiny or --sizes, not both")
    sizes = list(TINY_SIZES if args.tiny else args.sizes or DEFAULT_SIZES)
    for size in sizes:
        try:
            parse_size(size)
        except ValueError as err:
            p.error(str(err))
    if args.calib < 4:
        p.error(f"--calib must be at least 4 (the search uses 4 windows), got {args.calib}")
    if args.child:
        print(json.dumps(child(args.child, sizes[0], args.calib, args.seq_len, args.batch)), flush=True)
        return None
    if len(sizes) < 2:
        p.error("at least two sizes are needed for the fit")
    rows = []
    for size in sizes:
        row = {"size": size}
        for mode in ("pipeline", "uniform"):
            row[mode] = measure(mode, size, args.calib, args.seq_len, args.batch)
            print(f"{size} {mode}: {row[mode]['wall_s']:.1f} s, peak {row[mode]['peak_rss_mib']:.0f} MiB", flush=True)
        rows.append(row)
    command = " ".join(["python -m benchmarks.scaling", *(sys.argv[1:] if argv is None else argv)])
    text = report(rows, args, command)
    tag = args.tag or (f"tiny_{machine_tag()}" if args.tiny else machine_tag())
    out = Path(args.out) / f"scaling_{tag}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    (out.with_suffix(".json")).write_text(json.dumps(rows, indent=1) + "\n")
    print(text)
    return out


if __name__ == "__main__":
    main()
