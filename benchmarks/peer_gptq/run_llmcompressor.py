"""llm-compressor's GPTQ on SmolLM2-135M, side by side with ours: same model, data, group size, metric.

    bash benchmarks/peer_gptq/setup.sh                                   # the peer's own venv
    /tmp/peer-venv/bin/python -m benchmarks.peer_gptq.run_llmcompressor
    # writes benchmarks/results/gptq_peer_smollm2.md

Run from the repository root with the PEER venv's python (it never imports infoq_hf). The float
SmolLM2 folder is `assets.smollm2_dir()` (fp32, from the Q4_1 GGUF), the calibration and test windows
are `common.smollm2_data`'s (the same tokens as `benchmarks/gptq.py`), perplexity is
`common.perplexity`. The peer's scheme matches ours: int4 weights, asymmetric, group 64, `lm_head`
float, dampening 0.01 of the mean diagonal, block 128, no activation order (llm-compressor's default
is static act-order; it is turned off to match our default), sequential by decoder layer.
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch

from .. import assets, common


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calib", type=int, default=32)
    p.add_argument("--dev", type=int, default=16)
    p.add_argument("--eval", type=int, default=32)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)

    import llmcompressor
    import transformers
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier
    from transformers import AutoModelForCausalLM

    _, _, calib, dev, test = common.smollm2_data(args.calib, args.dev, args.eval)
    model = AutoModelForCausalLM.from_pretrained(assets.smollm2_dir(), dtype=torch.float32).eval()
    ids = torch.cat([b["input_ids"] for b in calib])
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist()})
    scheme = {
        "targets": ["Linear"],
        "weights": {"num_bits": args.bits, "type": "int", "symmetric": False, "strategy": "group", "group_size": 64},
    }
    recipe = GPTQModifier(
        config_groups={"group_0": scheme}, ignore=["lm_head"], dampening_frac=0.01, block_size=128, actorder=None
    )
    t = time.perf_counter()
    oneshot(
        model=model,
        dataset=dataset,
        recipe=recipe,
        num_calibration_samples=len(ids),
        max_seq_length=ids.shape[1],
        shuffle_calibration_samples=False,
        pipeline="sequential",
    )
    wall = time.perf_counter() - t
    ppl_dev, ppl_test = common.perplexity(model, dev), common.perplexity(model, test)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    header = (
        f"llm-compressor {llmcompressor.__version__} GPTQ (transformers {transformers.__version__}, torch "
        f"{torch.__version__}) on SmolLM2-135M: int{args.bits} weights, asymmetric, group 64, `lm_head` float, "
        f"dampening 0.01, block 128, no act-order, sequential pipeline, calibration {len(ids)}x{ids.shape[1]} "
        f"tokens (the windows of benchmarks/gptq.py); perplexity on {args.dev}x128 dev / {args.eval}x128 test "
        f"windows; {common.machine()}. The fp32 weights come from a Q4_1 GGUF."
    )
    md = [
        "| quantizer | dev ppl | test ppl | quantize wall s | peak RSS MiB |",
        "|---|---|---|---|---|",
        f"| llm-compressor GPTQ W{args.bits} g64 | {ppl_dev:.2f} | {ppl_test:.2f} | {wall:.1f} | {rss:.0f} |",
    ]
    text = "\n".join(
        [
            header,
            "",
            *md,
            "",
            "Command: `bash benchmarks/peer_gptq/setup.sh && "
            "/tmp/peer-venv/bin/python -m benchmarks.peer_gptq.run_llmcompressor`",
        ]
    )
    print(text)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "gptq_peer_smollm2.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
