"""GPTQ candidates of a tiny seeded Llama (float inputs, then a mixed prefix), written with torch.save:
run under `accelerate launch` (the sweeps split over the processes) or alone (the reference).

    accelerate launch --multi_gpu --num_processes 2 --num_machines 1 --mixed_precision no \
        --dynamo_backend no tests/helpers/dist_gptq_job.py OUT.pt
    python tests/helpers/dist_gptq_job.py OUT.pt --no-accelerate

`tests/quant/gptq/test_gptq_distributed.py` compares the two files.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repository root: `tests.helpers`


def run(out: str, use_accelerate: bool) -> None:
    from infoq_hf import quantizable_layers
    from infoq_hf.quant.gptq import gptq_candidates
    from infoq_hf.quant.scheme import PackingScheme
    from tests.helpers.models import lm_batches, tiny_llama

    accelerator = None
    if use_accelerate:
        from accelerate import Accelerator

        accelerator = Accelerator(cpu=True)
    torch.set_num_threads(1)
    model = tiny_llama(vocab=96, layers=2, pad_token_id=None, max_position_embeddings=64)
    names = [n for n in quantizable_layers(model) if n != "lm_head"]
    widths = {n: (2, 3, 4, 8) for n in names}
    kw = dict(scheme=PackingScheme(group_size=32), options={"act_order": True}, progress=False, accelerator=accelerator)
    runs = {
        "float": gptq_candidates(model, widths, lm_batches(), **kw),
        "prefix": gptq_candidates(
            model, widths, lm_batches(), prefix_bits={n: (3, 2)[i % 2] for i, n in enumerate(names)}, **kw
        ),
    }
    if accelerator is None or accelerator.is_main_process:
        data = {
            k: {
                "ratios": c.error_ratio,
                "meta": c.meta,
                "rounded": {key: (r.packed, r.scale, r.zero_point) for key, r in c.rounded.items()},
            }
            for k, c in runs.items()
        }
        torch.save(data, out)
    if accelerator is not None:
        torch.distributed.barrier()  # not wait_for_everyone: see dist_probe_job.py
        accelerator.end_training()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--no-accelerate", action="store_true")
    args = parser.parse_args()
    run(args.out, not args.no_accelerate)
