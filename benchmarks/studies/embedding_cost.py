"""How the default search rates SmolLM2's embedding against its decoder layers.

    python -m benchmarks.studies.embedding_cost     # ~2 min on 2 CPU cores: results/embedding_cost_smollm2.md

The default InfoQ search (per-width first-order scores, round to nearest here: embeddings are packed
that way under GPTQ too) on the main job's 4 search windows with the embedding among the layers: each
layer's 2-bit cost per weight, and how many of the vocabulary's rows the search tokens touch (the
first-order change of an embedding row no search token uses is zero). Then, for the embedding and six
decoder layers, the change the paper's probes measure (`change_estimate="probe"`: the layer quantized
alone, the information at the output measured again) against the first-order score, per width: where
that ratio is larger for the embedding than for the decoder layers, the first order under-rates it
for more than the rows it does not see.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from infoq_hf import search
from infoq_hf.pipeline.data import first_samples

from .. import common

EMBEDDING = "model.embed_tokens"
PROBED = [f"model.layers.{i}.{p}" for i in (0, 15, 29) for p in ("self_attn.q_proj", "mlp.down_proj")]
BITS = (2, 3, 4, 8)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="benchmarks/results/embedding_cost_smollm2.md")
    args = p.parse_args(argv)
    model, _, calib, _, _ = common.smollm2_data(32, 0, 0)
    searched = first_samples(calib, 4)
    seen = torch.unique(torch.cat([b["input_ids"].reshape(-1) for b in searched])).numel()
    table = search(model, searched, bits=BITS, group_size=64, skip_modules=["lm_head"], embeddings=True, progress=False)
    others = [n for n in table.layers if n not in PROBED and n != EMBEDDING]
    probed = search(
        model,
        searched,
        bits=BITS,
        group_size=64,
        skip_modules=["lm_head", *others],
        embeddings=True,
        change_estimate="probe",
        progress=False,
    )
    per_weight = {n: info["w"][2] / info["params"] for n, info in table.layers.items()}
    decoder = sorted(v for n, v in per_weight.items() if n != EMBEDDING)
    rank = sorted(per_weight.values()).index(per_weight[EMBEDDING]) + 1
    lines = [
        f"# The embedding's cost in the default search (SmolLM2-135M, {common.machine()})",
        "",
        "Command: `python -m benchmarks.studies.embedding_cost`",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| vocabulary rows the 4 search windows use | {seen} of {model.config.vocab_size} |",
        f"| embedding: 2-bit cost per weight | {per_weight[EMBEDDING]:.3e} |",
        f"| decoder layers: 2-bit cost per weight, median (min - max) | {decoder[len(decoder) // 2]:.3e} "
        f"({decoder[0]:.3e} - {decoder[-1]:.3e}) |",
        f"| the embedding's rank, lowest cost per weight first | {rank} of {len(per_weight)} |",
        "",
        "Probed change / first-order score, per width:",
        "",
        "| layer | " + " | ".join(f"{b} bits" for b in BITS[:-1]) + " |",
        "|---|" + "---|" * (len(BITS) - 1),
    ]
    for name in [EMBEDDING, *PROBED]:
        ratios = [probed.layers[name]["w"][b] / table.layers[name]["w"][b] for b in BITS[:-1]]
        lines.append(f"| {name} | " + " | ".join(f"{r:.3g}" for r in ratios) + " |")
    text = "\n".join(lines)
    print(text)
    Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
