"""Which width InfoQ's one probe per layer should quantize at, on a CNN (the LLM side:
`search_noise --variants`).

    python recipes/qat/train_fashion_mnist.py --epochs 3 --train-samples 20000 --out out/fashion_resnet8.pt
    python -m benchmarks.studies.probe_width_cnn   # ~2 min on 2 CPU cores: results/probe_width_fashion_resnet.md

The Fashion-MNIST ResNet-8 of `compare --model fashion_resnet`, its setup (candidates {2,3,4,8}, per
channel, round to nearest, 512 calibration images, the product's pipeline: the ILP's allocation or
uniform by KL on the calibration images), searched with probes at 3 and at 4 bits, seeds 0, 1 and 2,
at 2.5 and 3.0 average bits. Top-1 on dev images: 10000 training images the checkpoint was not trained
on (the recipe trains on a seeded 20000 of the 60000). The test images are not used: this study
chooses a default.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import sys
from pathlib import Path

import torch

from infoq_hf import InfoQConfig, quantize_with_infoq, search

from .. import common

ROOT = Path(__file__).resolve().parents[2]
BITS = (2, 3, 4, 8)
TRAINED_ON = 20000  # the recipe's --train-samples


def fashion_dev_split(checkpoint):
    """The recipe's ResNet-8 from `checkpoint`, 512 calibration images and 10000 dev images (training
    images the checkpoint was not trained on), as (model, calibration batches, dev batches)."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.assets import fashion_mnist
    from recipes.common import FASHION_MEAN, FASHION_STD, tuple_batches
    from recipes.qat.resnet import load_checkpoint

    model, _ = load_checkpoint(Path(checkpoint))
    model.eval()
    xtr, ytr, _, _ = fashion_mnist()
    order = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(0))  # the recipe's draw
    x = ((xtr.float() / 255.0 - FASHION_MEAN) / FASHION_STD).unsqueeze(1)
    calib_idx, dev_idx = order[:512], order[TRAINED_ON : TRAINED_ON + 10000]
    return model, tuple_batches(x[calib_idx], ytr[calib_idx], 64), tuple_batches(x[dev_idx], ytr[dev_idx], 500)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="out/fashion_resnet8.pt")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--probe-bits", type=int, nargs="+", default=[4, 3])
    p.add_argument("--budgets", type=float, nargs="+", default=[3.0, 2.5])
    p.add_argument("--out", default="benchmarks/results/probe_width_fashion_resnet.md")
    args = p.parse_args()
    model, calib, dev = fashion_dev_split(args.checkpoint)
    float_top1 = common.top1(model, dev)
    base = dict(bits=BITS, group_size=None, calibration=calib, pin_first_last=False)
    top1 = {}
    for budget in args.budgets:
        uniform = copy.deepcopy(model)
        quantize_with_infoq(uniform, InfoQConfig(**{**base, "bits": int(budget)}), progress=False)
        top1["uniform", budget] = common.top1(uniform, dev)
    for probe_bits, seed in itertools.product(args.probe_bits, args.seeds):
        table = search(
            model, calib, bits=BITS, seed=seed, probe_bits=probe_bits, progress=False, **common.PROBED_CALIBRATED
        )
        for budget in args.budgets:
            m = copy.deepcopy(model)
            config = InfoQConfig(**base, budget={"avg_bits": budget}, seed=seed)
            quantize_with_infoq(m, config, table=table, progress=False)
            top1[probe_bits, seed, budget] = accuracy = common.top1(m, dev)
            print(f"probes at {probe_bits} bits, seed {seed}, {budget} bits: dev top-1 {accuracy:.2f}")
    lines = [
        f"# InfoQ's probe width on a CNN (Fashion-MNIST ResNet-8, {common.machine()})",
        "",
        "Command: `python -m benchmarks.studies.probe_width_cnn`",
        "",
        f"Dev top-1 % on 10000 training images the checkpoint was not trained on (float {float_top1:.2f}); "
        "the product's pipeline from each search; seeds " + ", ".join(map(str, args.seeds)) + ".",
        "",
        "| probes at | " + " | ".join(f"{b:.1f} avg bits: per seed | {b:.1f}: mean" for b in args.budgets) + " |",
        "|---|" + "---|---|" * len(args.budgets),
    ]
    for probe_bits in args.probe_bits:
        cells = []
        for b in args.budgets:
            values = [top1[probe_bits, s, b] for s in args.seeds]
            cells += [" / ".join(f"{v:.2f}" for v in values), f"{statistics.mean(values):.2f}"]
        lines.append(f"| {probe_bits} bits | " + " | ".join(cells) + " |")
    lines.append(
        "| uniform, the budget's width rounded down | "
        + " | ".join(f"{int(b)}-bit | {top1['uniform', b]:.2f}" for b in args.budgets)
        + " |"
    )
    Path(args.out).write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
