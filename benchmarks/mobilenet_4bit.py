"""MobileNetV2 at 4.0 average bits: does the mixed allocation (with the default pins) beat uniform 4-bit?
Every method through `quantize_with_infoq` with the same configuration, with 0 and `--refine-passes`
refinement moves.

    python -m benchmarks.mobilenet_4bit

The 20 labelled foolbox ImageNet images are split: the first 10 give the calibration set (augmented
views labelled by the fp32 model, as in `benchmarks.mobilenet`), on which every search and the
refinement run; the other 10, never seen by any search, are the evaluation images (resize 256,
center crop 224). Metric: mean KL(fp32 || quantized) on the evaluation images, plus top-1 agreement
with fp32. Per-output-channel asymmetric weights, candidates {2,3,4,8}, default `pin_first_last`
("auto": only end layers holding <= 5% of the weights are pinned: the stem, not the classifier).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

import infoq_hf
from infoq_hf import InfoQConfig
from infoq_hf.pipeline import quantize_with_infoq

from . import assets, common
from .compare import pipeline_estimate
from .mobilenet import calibration_set, evaluate


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--views", type=int, default=8, help="augmented views per calibration image")
    p.add_argument("--calib-px", type=int, default=128)
    p.add_argument("--avg-bits", type=float, default=4.0)
    p.add_argument("--refine-passes", type=int, default=64)
    p.add_argument("--hutchinson", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="benchmarks/results/mobilenet_v2_4bit.md")
    args = p.parse_args(argv)
    started = time.perf_counter()
    model = assets.mobilenet_v2().eval()
    images = assets.foolbox_images("imagenet")
    calib_images, eval_images = images[:10], images[10:]
    pre = assets.imagenet_preprocess()
    x_eval = torch.stack([pre(img.convert("RGB")) for img, _ in eval_images])
    labels = torch.tensor([lab for _, lab in eval_images])
    with torch.no_grad():
        ref_logits = model(x_eval)
    calib, cinfo = calibration_set(model, calib_images, args.views, args.calib_px, args.seed, 40)

    rows = []
    base = dict(bits=(2, 3, 4, 8), group_size=None, calibration=calib, seed=args.seed)

    def report(label, config, table=None, cost_s=0.0):
        q = copy.deepcopy(model)
        result = quantize_with_infoq(q, config, table=table, progress=False)
        r = evaluate(q, x_eval, ref_logits, labels)
        rows.append((label, r["kl"], r["agree"], r["correct"], cost_s, common.check_note(result)))
        print(rows[-1], flush=True)

    report(f"uniform {int(args.avg_bits)}-bit", InfoQConfig(**{**base, "bits": int(args.avg_bits)}))
    for method in ("infoq", "hawq", "weight_mse", "size_only", "random"):
        t = time.perf_counter()
        kw = {"hutchinson_samples": args.hutchinson} if method == "hawq" else {}
        if method == "infoq":  # searched as the product's pipeline searches at this budget
            kw = {"change_estimate": pipeline_estimate(model, base["bits"], args.avg_bits, group_size=None)}
        table = infoq_hf.search(model, calib, bits=base["bits"], method=method, seed=args.seed, progress=False, **kw)
        search_s = time.perf_counter() - t
        for suffix, moves in [("", 0), (f" + {args.refine_passes} moves", args.refine_passes)]:
            config = InfoQConfig(**base, budget={"avg_bits": args.avg_bits}, method=method, refine_passes=moves)
            report(method + suffix, config, table, search_s)
    cmd = "python -m benchmarks.mobilenet_4bit " + " ".join(sys.argv[1:] if argv is None else argv)
    out = [
        f"MobileNetV2 (ImageNet weights) at {args.avg_bits} average bits, weight-only, per channel; calibration "
        f"{cinfo['samples']} views of 10 foolbox images, evaluation on the 10 other images (never searched on); "
        f"every row through `quantize_with_infoq` (the ILP's allocation kept or replaced by uniform by KL to "
        f"fp32 on the calibration views), 0 and {args.refine_passes} refinement moves; `{cmd.strip()}`; "
        f"{common.machine()}; "
        f"{time.perf_counter() - started:.0f} s in all",
        "",
        "| allocation | mean KL(fp32 \\|\\| q), eval images | top-1 agreement /10 | correct /10 | search s | "
        "whole-model check (calibration KL) |",
        "|---|---|---|---|---|---|",
    ]
    out += [f"| {a} | {b:.4f} | {c} | {d} | {e:.0f} | {f} |" for a, b, c, d, e, f in rows]
    text = "\n".join(out) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
