"""Which InfoQ score form allocates weight and activation widths best under a BitOps budget (dev data).

    python -m benchmarks.studies.activation_scores --checkpoint out/fashion_resnet8.pt   # ~5 min

The Fashion-MNIST ResNet-8 of `probe_width_cnn` (per channel, round to nearest, 512 calibration images,
candidates {2,3,4,8} for weights and {4,8} for activations, no pins), ILP allocation at the BitOps of
uniform W4A4 and at 1.5x it, search seeds 0, 1, 2; dev top-1 on 10000 training images the checkpoint
was not trained on. Rows differ only in the InfoQ options of the search.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from benchmarks import common
from benchmarks.studies.probe_width_cnn import fashion_dev_split
from infoq_hf import BitPolicy, Budget, allocate, bitops, calibrate_activation_ranges, quantize_model, search
from infoq_hf.quant.apply import quantizable_layers

SETUP = __doc__.split("\n\n")[2].strip()
FORMS = {
    "default (per-width weights, activations D(l, b))": {},
    "per-width weights, Eq. 4 activations (D(l, b) / b)": {"inv_bits": True},
    "probed per-width weights and activations": {"change_estimate": "probe"},
    "previous form (calibrated)": dict(common.CALIBRATED),
}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default="out/fashion_resnet8.pt")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--forms", nargs="+", default=list(FORMS))
    p.add_argument("--out", default="benchmarks/results/activation_scores_fashion_resnet.md")
    args = p.parse_args(argv)
    torch.manual_seed(0)
    model, calib, dev = fashion_dev_split(args.checkpoint)
    names = list(quantizable_layers(model))
    x0 = calib[0][0][:1]
    w4a4 = BitPolicy({n: {"w_bits": 4, "a_bits": 4} for n in names})
    ops = bitops(model, w4a4, x0)
    budgets = {"W4A4 BitOps": ops, "1.5x W4A4 BitOps": 1.5 * ops}

    def top1(policy):
        m = copy.deepcopy(model)
        quantize_model(m, policy, act_ranges=calibrate_activation_ranges(m, [b[0] for b in calib], policy))
        return common.top1(m, dev)

    rows = [("uniform W4A4", {"W4A4 BitOps": [top1(w4a4)]})]
    for form in args.forms:
        result = {b: [] for b in budgets}
        for seed in args.seeds:
            table = search(
                model,
                calib,
                method="infoq",
                bits=(2, 3, 4, 8),
                seed=seed,
                score_activations=True,
                progress=False,
                **FORMS[form],
            )
            for label, ops_b in budgets.items():
                policy = allocate(table, Budget(bitops=ops_b), act_bits=[4, 8], pin_first_last=False)
                result[label].append(top1(policy))
            print(form, seed, {k: v[-1] for k, v in result.items()}, flush=True)
        rows.append((form, result))
    lines = [
        "# InfoQ's score forms under a BitOps budget (Fashion-MNIST ResNet-8, dev top-1 %)",
        "",
        f"`python -m benchmarks.studies.activation_scores`; {common.machine()}. {SETUP}",
        "",
        "| form | " + " | ".join(f"{b} (mean; seeds)" for b in budgets) + " |",
        "|---|" + "---|" * len(budgets),
    ]
    for form, result in rows:
        cells = [
            f"{sum(v) / len(v):.2f} ({', '.join(f'{x:.2f}' for x in v)})" if (v := result.get(b)) else "-"
            for b in budgets
        ]
        lines.append(f"| {form} | " + " | ".join(cells) + " |")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
