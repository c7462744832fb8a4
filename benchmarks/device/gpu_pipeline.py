"""The default pipeline on a CUDA device: each stage's time and the peak GPU memory.

    python -m benchmarks.device.gpu_pipeline --out results.json

Runs on a machine with a GPU (the project never needs one): the same code paths as on CPU, with the
model and the calibration batches on `cuda`. Two models, both random-initialised from configs (no
hub, and the SmolLM2 asset does not travel to the device machine): SmolLM2-135M's architecture
(30 blocks, width 576, vocabulary 49152) and a 4-block width-2048 Llama. For each, one uniform 3-bit
GPTQ pass (the baseline a GPTQ user runs) and the default InfoQ pipeline at 3.0 average bits on the
same 32x128 random-token calibration windows; times are wall clock, memory is
`torch.cuda.max_memory_allocated` over each run. Random weights time the same as trained ones;
their perplexities mean nothing and are not reported.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

import infoq_hf
from infoq_hf import InfoQConfig

MODELS = {
    "smollm2-135m-shape": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        tie_word_embeddings=True,
    ),
    "llama-w2048-4blocks": dict(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=4,
        num_attention_heads=16,
        num_key_value_heads=4,
        vocab_size=32000,
        tie_word_embeddings=False,
    ),
}


def build(shape: dict, device: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(max_position_embeddings=512, **shape)
    return LlamaForCausalLM(config).to(device).eval()


def windows(vocab: int, count: int, seq_len: int, device: str, batch: int = 4) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (count, seq_len), generator=g)
    return [
        {"input_ids": ids[i : i + batch].to(device), "attention_mask": torch.ones_like(ids[i : i + batch]).to(device)}
        for i in range(0, count, batch)
    ]


def timed(model, config, device: str) -> dict:
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    result = infoq_hf.quantize_pretrained(model, config)
    if cuda:
        torch.cuda.synchronize()
    return {
        "wall_s": time.perf_counter() - t,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "stages_s": result.summary["times_s"],
        "avg_bits": result.summary["avg_bits"],
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu_pipeline.json")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--calib", type=int, default=32)
    p.add_argument("--search-samples", type=int, default=4)
    p.add_argument("--device", default="cuda", help="cuda (what it is for) or cpu (to check the script itself)")
    p.add_argument("--small", action="store_true", help="a 2-block width-64 Llama instead (a quick check on CPU)")
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --device cpu --small to check the script")
    if args.small:
        MODELS["small"] = dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=256,
        )
        args.models = "small"
    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else platform.processor() or "cpu"
    report = {"device": device_name, "torch": torch.__version__, "python": platform.python_version(), "models": {}}
    for name in args.models.split(","):
        row = {}
        for label in ("uniform-3bit-gptq", "infoq-default-3.0"):
            model = build(MODELS[name], args.device)
            calib = windows(model.config.vocab_size, args.calib, 128, args.device)
            if label.startswith("uniform"):
                names = infoq_hf.quantizable_layers(model, skip_modules=["lm_head"])
                config = InfoQConfig(
                    policy={n: {"w_bits": 3, "a_bits": None} for n in names},
                    calibration=calib,
                    rounding="gptq",
                    group_size=64,
                )
            else:
                config = InfoQConfig(
                    bits=[2, 3, 4, 8],
                    budget={"avg_bits": 3.0},
                    calibration=calib,
                    search_samples=args.search_samples,
                    group_size=64,
                    seed=0,
                )
            row[label] = timed(model, config, args.device)
            print(name, label, json.dumps(row[label]), flush=True)
            report["models"][name] = row
            with open(args.out, "w") as f:  # after every run: a device lease may end mid-way
                json.dump(report, f, indent=2)
            del model
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
        row["ratio_wall"] = row["infoq-default-3.0"]["wall_s"] / row["uniform-3bit-gptq"]["wall_s"]
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
