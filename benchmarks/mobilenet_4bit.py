"""MobileNetV2 at 4.0 average bits: does the mixed allocation (with the default pins) beat uniform 4-bit?

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
from infoq_hf import Budget

from . import assets, common
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
    names = list(infoq_hf.quantizable_layers(model))
    budget = Budget(avg_bits=args.avg_bits)

    rows = []

    def report(label, policy, cost_s, note=""):
        q = infoq_hf.quantize_model(copy.deepcopy(model), policy)
        r = evaluate(q, x_eval, ref_logits, labels)
        rows.append((label, r["kl"], r["agree"], r["correct"], cost_s, note))
        print(rows[-1], flush=True)

    report(f"uniform {int(args.avg_bits)}-bit", {n: int(args.avg_bits) for n in names}, 0.0)
    for method in ("infoq", "hawq", "weight_mse", "random"):
        t = time.perf_counter()
        kw = {"hutchinson_samples": args.hutchinson} if method == "hawq" else {}
        table = infoq_hf.search(model, calib, bits=(2, 3, 4, 8), method=method, seed=args.seed, progress=False, **kw)
        search_s = time.perf_counter() - t
        report(method, infoq_hf.allocate(table, budget), search_s)
        if method == "infoq":
            t = time.perf_counter()
            policy = infoq_hf.refine(
                infoq_hf.allocate(table, budget),
                model,
                calib,
                passes=args.refine_passes,
                seed=args.seed,
                progress=False,
            )
            r = policy.report.refinement
            report(
                "infoq + refinement",
                policy,
                search_s + time.perf_counter() - t,
                f"calibration KL {r.kl_ilp:.3f} (ILP) -> {r.kl_final:.3f}, start {r.start}, "
                f"{r.accepted}/{r.passes} accepted",
            )
    cmd = "python -m benchmarks.mobilenet_4bit " + " ".join(sys.argv[1:] if argv is None else argv)
    out = [
        f"MobileNetV2 (ImageNet weights) at {args.avg_bits} average bits, weight-only, per channel; calibration "
        f"{cinfo['samples']} views of 10 foolbox images, evaluation on the 10 other images (never searched on); "
        f"refinement {args.refine_passes} passes; `{cmd.strip()}`; {common.machine()}; "
        f"{time.perf_counter() - started:.0f} s in all",
        "",
        "| allocation | mean KL(fp32 \\|\\| q), eval images | top-1 agreement /10 | correct /10 | search s | note |",
        "|---|---|---|---|---|---|",
    ]
    out += [f"| {a} | {b:.4f} | {c} | {d} | {e:.0f} | {f} |" for a, b, c, d, e, f in rows]
    text = "\n".join(out) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
