"""GPTQ candidates: the per-width pass (a factorization and a sweep per layer and width, one byte per
code) against the one-pass candidates (one factorization per layer, all widths swept together, codes
packed at their width), on the same model and data in one run; then the default pipeline's stage
times with GPTQ rounding next to one uniform GPTQ pass.

    python -m benchmarks.gptq_one_pass --model tiny        # a tiny Llama from a config: seconds
    python -m benchmarks.gptq_one_pass --model smollm2     # SmolLM2-135M, 32 x 128 calibration tokens

Writes benchmarks/results/gptq_one_pass_<model>.json and prints it. The per-width pass is rebuilt here
from the public walk and the single-width `quantize_layer_gptq`, as `gptq_candidates` ran before.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from infoq_hf import InfoQConfig, quantizable_layers, quantize_with_infoq
from infoq_hf.quant.apply import default_forward
from infoq_hf.quant.gptq import GPTQOptions, GPTQReport, gptq_candidates, gptq_quantize_model, quantize_layer_gptq
from infoq_hf.quant.gptq.hessian import output_error
from infoq_hf.quant.gptq.walk import hessian_stages, model_blocks, trace_stages
from infoq_hf.quant.modules import oriented_weight
from infoq_hf.quant.quantizer import fake_quantize_weight
from infoq_hf.quant.scheme import PackingScheme

BITS = (2, 3, 4, 8)


class _NoBar:
    def update(self, n):
        pass


@torch.no_grad()
def per_width_candidates(model, names, batches, scheme, options) -> tuple[dict, int]:
    """The candidates as computed before the one pass: ({name: {bits: ratio}}, bytes of the rounded weights)."""
    ratios, stored = {}, 0
    stages = trace_stages(model, model_blocks(model), names, batches[0], default_forward)
    for accs in hessian_stages(model, stages, names, batches, default_forward, GPTQReport(), _NoBar()):
        for name, acc in accs.items():
            hessian, layer = acc.hessian(), acc.layer
            acc.sum = None
            w = oriented_weight(layer).detach().float()
            ratios[name] = {}
            for b in BITS:
                ws = scheme.weight_scheme(layer, b)
                qw = quantize_layer_gptq(name, layer, hessian, ws, options)
                e_rtn = output_error(fake_quantize_weight(w, ws, name) - w, hessian)
                ratios[name][b] = output_error(qw.dequantize() - w, hessian) / e_rtn if e_rtn > 0 else 1.0
                stored += sum(
                    t.numel() * t.element_size() for t in (qw.codes, qw.scale, qw.zero_point) if t is not None
                )
    return ratios, stored


def load(model_name: str, n_calib: int):
    if model_name == "tiny":
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        config = LlamaConfig(
            vocab_size=512,
            hidden_size=256,
            intermediate_size=640,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
        model = LlamaForCausalLM(config).eval()
        g = torch.Generator().manual_seed(1)
        ids = torch.randint(0, 512, (n_calib, 128), generator=g)
        return model, [{"input_ids": w, "attention_mask": torch.ones_like(w)} for w in ids.split(4)]
    from . import common

    model, _, calib, _, _ = common.smollm2_data(n_calib, 1, 1)
    return model, calib


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    p.add_argument("--calib", type=int, default=32, help="calibration windows of 128 tokens (default 32)")
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--no-pipeline", action="store_true", help="only the candidate passes")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    model, batches = load(args.model, args.calib)
    names = list(quantizable_layers(model, skip_modules=["lm_head"]))
    scheme, options = PackingScheme(group_size=args.group_size), GPTQOptions()
    weights = sum(model.get_submodule(n).weight.numel() for n in names)

    t = time.perf_counter()
    old_ratios, old_bytes = per_width_candidates(model, names, batches, scheme, options)
    per_width_s = time.perf_counter() - t
    t = time.perf_counter()
    new = gptq_candidates(model, {n: BITS for n in names}, batches, scheme=scheme, options=options, progress=False)
    one_pass_s = time.perf_counter() - t
    row = {
        "model": args.model,
        "calibration_windows": args.calib,
        "group_size": args.group_size,
        "widths": BITS,
        "threads": torch.get_num_threads(),
        "per_width_s": round(per_width_s, 2),
        "one_pass_s": round(one_pass_s, 2),
        "speedup": round(per_width_s / one_pass_s, 2),
        "same_ratios": old_ratios == new.error_ratio,
        "bytes_per_weight_before": round(old_bytes / weights, 4),
        "bytes_per_weight_after": round(new.nbytes() / weights, 4),
    }
    print(json.dumps(row), flush=True)
    if not args.no_pipeline:
        t = time.perf_counter()
        gptq_quantize_model(copy.deepcopy(model), {n: 3 for n in names}, batches, scheme=scheme, progress=False)
        row["uniform_3bit_gptq_s"] = round(time.perf_counter() - t, 2)
        config = InfoQConfig(
            bits=list(BITS),
            budget={"avg_bits": 3.0},
            group_size=args.group_size,
            calibration=batches,
            rounding="gptq",
            modules_to_not_convert=["lm_head"],
        )
        t = time.perf_counter()
        result = quantize_with_infoq(copy.deepcopy(model), config, progress=False)
        row["pipeline_s"] = round(time.perf_counter() - t, 2)
        row["pipeline_stage_s"] = {k: round(v, 2) for k, v in result.summary["times_s"].items()}
        row["pipeline_over_uniform_gptq"] = round(row["pipeline_s"] / row["uniform_3bit_gptq_s"], 2)
    out = Path(args.out) / f"gptq_one_pass_{args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=1) + "\n")
    print(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
