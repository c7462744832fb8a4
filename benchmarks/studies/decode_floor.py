"""How fast can packed decode be in transformers? The time left when the weights cost nothing.

    python -m benchmarks.studies.decode_floor     # ~5 min on 2 CPU cores; writes results/decode_floor_smollm2.md

SmolLM2-135M in bfloat16, batch 1, greedy decode of `--new-tokens` after a 32-token prompt (as
`benchmarks.serving`). Beside the float model and the packed 4.0-bit checkpoint of `benchmarks.serving`,
the float model with every decoder linear layer replaced by one that returns zeros of its output's
shape (no weight read, no multiply), and with the LM head replaced too: the same generate loop,
attention, norms and sampling, so its speed bounds what any linear kernel can reach. Medians of
`--rounds` interleaved rounds. The ratio float / floor is the largest decode speed-up over the float
model that faster linear layers can give here.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from torch import nn

from .. import assets, common, serving


class Free(nn.Module):
    """A linear layer that costs nothing: zeros of the output's shape."""

    def __init__(self, out_features: int):
        super().__init__()
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(*x.shape[:-1], self.out_features)


def freed(model: nn.Module, head: bool) -> nn.Module:
    """`model` with its decoder's linear layers (and the LM head when `head`) made `Free`."""
    for name, module in list(model.named_modules()):
        if isinstance(module, nn.Linear) and (head or name != "lm_head"):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, Free(module.out_features))
    return model


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--out", default="benchmarks/results/decode_floor_smollm2.md")
    args = p.parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(assets.smollm2_dir())
    prompt = common.lm_windows(assets.text_split()[1], tok, 1, 128)[:, :32]
    folder = assets.smollm2_dir()

    def float_bf16():
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()

    with tempfile.TemporaryDirectory(prefix="infoq-floor-") as work:
        packed = serving.packed_checkpoint(folder, 4.0, None, Path(work) / "packed-4.0", {})
        models = {
            "float bfloat16": float_bf16(),
            "packed 4.0 bits (bf16, int4 kernel)": serving.load("4.0", {"4.0": packed}),
            "float, decoder linear layers free": freed(float_bf16(), head=False),
            "float, every linear layer and the head free": freed(float_bf16(), head=True),
        }
        speeds = {name: [] for name in models}
        for m in models.values():
            serving.decode_tokens_per_s(m, prompt, 2)
        for _ in range(args.rounds):
            for name, m in models.items():
                speeds[name].append(serving.decode_tokens_per_s(m, prompt, args.new_tokens))
            print({n: round(s[-1], 2) for n, s in speeds.items()}, flush=True)
    med = {n: statistics.median(s) for n, s in speeds.items()}
    base = med["float bfloat16"]
    lines = [
        "# Decode speed with the linear layers free (SmolLM2-135M, bfloat16, batch 1)",
        "",
        f"Command: `python -m benchmarks.studies.decode_floor --rounds {args.rounds}`; {common.machine()}, "
        f"{torch.get_num_threads()} torch threads; {args.new_tokens} new tokens after 32, medians of "
        f"{args.rounds} interleaved rounds.",
        "",
        "| model | decode tok/s | ms / token | vs float bfloat16 |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {n} | {v:.2f} | {1e3 / v:.1f} | {v / base:.2f}x |" for n, v in med.items()]
    print("\n".join(lines))
    Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
