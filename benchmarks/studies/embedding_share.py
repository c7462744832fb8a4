"""Should the input embedding (and the LM head tied to it) be a layer of the allocation?

    python -m benchmarks.studies.embedding_share     # ~20 min on 2 CPU cores; writes results/embedding_share_smollm2.md

SmolLM2-135M (its tied embedding holds 21% of the weights), the product's pipeline through
`quantize_with_infoq` with the demo's settings (32x128 calibration tokens, search on the first 4,
candidates {2,3,4,8}, group 64, GPTQ), the float leftovers in bfloat16. Rows: the embedding kept in
bfloat16 (`quantize_embeddings=False`) at 3.0 average bits; the embedding allocated with the other
layers at 3.0 and 4.0 average bits; and allocated under a size budget of the first row's stored
bytes. Dev perplexity is what a default would be chosen on; test perplexity only reports. Size: the
packed model's bytes (`model_size_bytes`).
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

from infoq_hf import InfoQConfig, model_size_bytes, quantizable_layers, quantize_with_infoq

from .. import common


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/embedding_share_smollm2.md")
    args = p.parse_args()
    model, _, calib, dev, test = common.smollm2_data(32, 16, 32)
    embedding = model.get_input_embeddings().weight.numel()
    linear = sum(m.weight.numel() for m in quantizable_layers(model, skip_modules=["lm_head"]).values())
    share = embedding / (embedding + linear)
    runs = [("bfloat16 embedding", False, 3.0), ("allocated", True, 3.0), ("allocated", True, 4.0)]
    runs.append(("allocated, the first row's size", True, None))
    rows = []
    for label, embeddings, bits in runs:
        quantized = copy.deepcopy(model)
        budget = {"avg_bits": bits} if bits else {"size_bytes": rows[0][3] * 2**20}
        config = InfoQConfig(
            bits=[2, 3, 4, 8],
            budget=budget,
            calibration=calib,
            search_samples=4,
            group_size=64,
            quantize_embeddings=embeddings,
            seed=0,
        )
        result = quantize_with_infoq(quantized, config)
        size = model_size_bytes(quantized) / 2**20
        emb_bits = result.policy.get(model_embedding_name(model))
        rows.append(
            (
                label,
                result.summary["avg_bits"],
                emb_bits,
                size,
                common.perplexity(quantized, dev),
                common.perplexity(quantized, test),
                common.check_note(result),
            )
        )
        print(rows[-1], flush=True)
    lines = [
        f"# The embedding in the allocation or kept in bfloat16 (SmolLM2-135M, {common.machine()})",
        "",
        "Command: `python -m benchmarks.studies.embedding_share`",
        "",
        f"The tied embedding holds {share:.1%} of the weights ({embedding / 1e6:.1f}M of "
        f"{(embedding + linear) / 1e6:.1f}M). Achieved average bits over the allocated layers (the embedding "
        "counted when allocated). Perplexity on 16 dev and 32 test windows of 128 tokens.",
        "",
        "| embedding | avg bits | embedding bits | size MiB | dev ppl | test ppl | whole-model check |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, bits, emb_bits, size, dev_ppl, test_ppl, note in rows:
        shown = "bf16" if emb_bits is None else emb_bits.w_bits
        lines.append(f"| {label} | {bits:.2f} | {shown} | {size:.1f} | {dev_ppl:.2f} | {test_ppl:.2f} | {note} |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


def model_embedding_name(model) -> str:
    embedding = model.get_input_embeddings()
    return next(n for n, m in model.named_modules() if m is embedding)


if __name__ == "__main__":
    main()
