"""`infoq export`: a quantized folder into a format other tools load without infoq_hf (compressed-tensors
for transformers or vLLM, GGUF for llama.cpp)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..export import export_compressed_tensors
from ..gguf import export_gguf, gguf_summary
from .common import EXIT_OK, UsageError

NAME = "export"
HELP = "write another format"
DESCRIPTION = "Convert a quantized folder into a checkpoint that other tools load without infoq_hf."
EXAMPLES = """\
  infoq export ./llama-1b-infoq --format compressed-tensors --out ./llama-1b-ct                # for transformers
  infoq export ./llama-1b-infoq --format compressed-tensors --target vllm --out ./llama-1b-vllm  # for vLLM
  infoq export ./llama-1b-infoq --format gguf --out ./llama-1b-infoq.gguf                        # for llama.cpp"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `infoq export`."""
    parser.add_argument("dir", metavar="DIR", help="a folder written by infoq quantize (a transformers model)")
    parser.add_argument(
        "--format",
        required=True,
        choices=["compressed-tensors", "gguf"],
        help="compressed-tensors: pack-quantized, tokenizer, chat template and generation config copied; "
        "gguf: one file for llama.cpp (Llama-architecture models)",
    )
    parser.add_argument(
        "--target",
        choices=["transformers", "vllm"],
        default="transformers",
        help="compressed-tensors only. transformers (default): loads with "
        "AutoModelForCausalLM.from_pretrained (tested: same logits as infoq_hf). vllm: the layout "
        "vLLM allocates (asymmetric zero points packed, which transformers cannot load); refused "
        "unless it passes rules read from vLLM 0.33.0's source (a WNA16 scheme per layer, one scheme "
        "per fused q/k/v and gate/up, tensor shapes). benchmarks/vllm_check.py asks vLLM 0.33.0 "
        "itself on CPU (schemes, parameter shapes, outputs at 2/4/8 bits); never served on a GPU",
    )
    parser.add_argument(
        "--kernels",
        choices=["any", "marlin"],
        default="any",
        help="with --target vllm: any vLLM 0.33.0 CUDA kernel (2..8 bits), or Marlin only (4/8 bits "
        "symmetric, 4 asymmetric; groups 32/64/128 or per channel)",
    )
    parser.add_argument("--out", required=True, metavar="OUT", help="folder to write (gguf: the new .gguf file)")
    parser.add_argument(
        "--tokenizer",
        metavar="GGUF_OR_DIR",
        help="gguf only: copy the tokenizer from this GGUF file, or convert it from this folder "
        "(default: DIR's own byte-level BPE tokenizer)",
    )


def cmd_export(args) -> int:
    """Convert the folder to --format (and --target); say how to load the result."""
    if not Path(args.dir).is_dir():
        raise UsageError(f"{args.dir} is not a folder; pass the --out folder of infoq quantize")
    if args.format == "gguf":
        out = export_gguf(args.dir, args.out, tokenizer=args.tokenizer)
        summary = gguf_summary(out)
        print(
            f"wrote {out} ({summary['file_bytes'] / 1e6:.2f} MB, quantized tensors at "
            f"{summary['quantized_bits_per_weight']:.3f} bits per weight); run it with llama.cpp, e.g. "
            f"llama-cli -m {out}"
        )
        return EXIT_OK
    out = export_compressed_tensors(args.dir, args.out, target=args.target, kernels=args.kernels)
    if args.target == "vllm":
        print(
            f"wrote a compressed-tensors pack-quantized checkpoint for vLLM into {out}; it passed the rules of "
            "vLLM 0.33.0's loader (infoq_hf.vllm_rules); serve it with `vllm serve {out}` (not run on a GPU by "
            "these checks)"
        )
    else:
        print(
            f"wrote a compressed-tensors pack-quantized checkpoint into {out}; load it with "
            "AutoModelForCausalLM.from_pretrained (needs the compressed-tensors package, not infoq_hf)"
        )
    return EXIT_OK
