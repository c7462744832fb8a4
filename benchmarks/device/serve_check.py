"""On a CUDA machine: load an infoq compressed-tensors export with torch + transformers + compressed-tensors
and time batch-1 greedy decode against the same model in bfloat16. Never needed by the project.

    python benchmarks/device/serve_check.py --out "$OUT"            # a random 4-layer width-1024 Llama
    python benchmarks/device/serve_check.py --layers 8 --hidden 2048 --bits 4 --out "$OUT"

No network: the model is built from a config with random weights (seeded), packed symmetric at `--bits`
in groups of `--group-size` (the layout transformers and vLLM both read), exported with
`export_compressed_tensors`, and loaded back with `AutoModelForCausalLM.from_pretrained` as a user would.
Needs torch with CUDA, transformers and compressed-tensors importable (carry them when the machine lacks
them, e.g. PYTHONPATH=shared/pylibs). Writes serve_check.json into --out: tokens/s of each, their ratio,
the largest logit difference between the loaded export and the packed model, and peak GPU memory.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def decode_tokens_per_s(model, prompt, new_tokens: int, repeats: int) -> float:
    import torch

    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        model.generate(prompt, **kwargs)  # warm-up: kernels, caches, decompression on first forward
        times = []
        for _ in range(repeats):
            torch.cuda.synchronize()
            start = time.perf_counter()
            model.generate(prompt, **kwargs)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    return new_tokens / statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=128)
    parser.add_argument("--prompt", type=int, default=32, help="prompt tokens")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, required=True, help="folder for serve_check.json")
    args = parser.parse_args(argv)

    needed = ("torch", "transformers", "compressed_tensors", "safetensors")
    missing = [m for m in needed if not importlib.util.find_spec(m)]
    if missing:
        print(f"missing packages {missing}: carry them (pure Python) and put them on PYTHONPATH", file=sys.stderr)
        return 3
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

    if not torch.cuda.is_available():
        print("no CUDA device: this check times GPU decode", file=sys.stderr)
        return 3
    sys.path.insert(0, str(ROOT))
    from infoq_hf import quantizable_layers, quantize_model
    from infoq_hf.export import export_compressed_tensors

    config = LlamaConfig(
        vocab_size=32000,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 8 // 3 // 64 * 64,
        num_hidden_layers=args.layers,
        num_attention_heads=args.hidden // 64,
        num_key_value_heads=max(1, args.hidden // 256),
        pad_token_id=0,
    )
    torch.manual_seed(0)
    float_model = LlamaForCausalLM(config).eval()
    names = [n for n in quantizable_layers(float_model) if n != "lm_head"]
    packed = quantize_model(
        _copy_of(float_model, config), {n: args.bits for n in names}, group_size=args.group_size, symmetric=True
    )
    prompt = torch.randint(1, config.vocab_size, (1, args.prompt), generator=torch.Generator().manual_seed(1))
    result = {"torch": torch.__version__, "device": torch.cuda.get_device_name(), "config": vars(args) | {"out": None}}
    with tempfile.TemporaryDirectory() as tmp:
        export = export_compressed_tensors(packed, Path(tmp) / "export")
        result["export_bytes"] = sum(f.stat().st_size for f in export.iterdir())
        loaded = AutoModelForCausalLM.from_pretrained(export, dtype=torch.bfloat16, device_map="cuda").eval()
        with torch.no_grad():
            theirs = loaded(input_ids=prompt.cuda()).logits.float().cpu()
            ours = packed.to(torch.bfloat16).cuda()(input_ids=prompt.cuda()).logits.float().cpu()
        result["max_logit_diff_vs_infoq_bf16"] = (theirs - ours).abs().max().item()
        del packed
        torch.cuda.reset_peak_memory_stats()
        result["export_tokens_per_s"] = decode_tokens_per_s(loaded, prompt.cuda(), args.new_tokens, args.repeats)
        result["export_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        del loaded
        torch.cuda.empty_cache()
    bf16 = float_model.to(torch.bfloat16).cuda()
    torch.cuda.reset_peak_memory_stats()
    result["bf16_tokens_per_s"] = decode_tokens_per_s(bf16, prompt.cuda(), args.new_tokens, args.repeats)
    result["bf16_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    result["decode_ratio_export_over_bf16"] = result["export_tokens_per_s"] / result["bf16_tokens_per_s"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve_check.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


def _copy_of(model, config):
    from transformers import LlamaForCausalLM

    copy = LlamaForCausalLM(config).eval()
    copy.load_state_dict(model.state_dict())
    return copy


if __name__ == "__main__":
    sys.exit(main())
