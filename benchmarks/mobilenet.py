"""MobileNetV2 at the paper's 14x weight-compression point, post-training, on the data there is offline.

    python -m benchmarks.mobilenet
    python -m benchmarks.mobilenet --views 4 --calib-px 128 --hutchinson 2 --threads 2

What is reproduced, and how (see also the notes written under the table):

* Model: torchvision MobileNetV2 (IMAGENET1K_V1 weights, fp32). Quantized: every Conv2d and the
  1280x1000 classifier (53 layers, 3.47 M weights), per output channel, asymmetric (uint8 zero
  point + fp32 scale per channel), candidate bits {2, 3, 4, 8}. BatchNorm and biases stay fp32.
* 14x: METHOD.md's "14x = 2.29 average bits" is weights only (32 / 2.29 = 13.97). Two budgets are
  run through the same ILP:
    - `Budget(avg_bits=2.29)`: the paper's convention (scales and zero points not counted);
    - `Budget(compression=14)`: fp32 bytes of the quantized weights over their packed bytes
      *including* the 5 bytes of scale + zero point per output channel (18,056 channels, 90 KB).
      Uniform 2 bits gives 14.49x on this count, so this budget leaves very little room.
  The classifier (37% of the weights) is NOT pinned: at 8 bits it alone would need
  0.37 * 8 = 2.95 average bits, so pinning first and last at 8 bits is infeasible; the run shows
  the allocator's infeasibility error with the smallest achievable value. The first conv
  (864 weights) is pinned at 8 bits, which costs 0.0015 average bits and stays feasible.
  Looser context budgets (`--context-bits`, default 4 and 6 average bits = 8x and 5.3x) are
  reported too, because at ~2.3 bits without any retraining every method collapses (uniform 4-bit
  post-training quantization already loses most of MobileNetV2's predictions).
* Calibration: only the 20 labelled foolbox ImageNet images exist offline. The calibration set
  is `--views` seeded augmented views of each (RandomResizedCrop(calib_px, scale=(0.25, 1)) +
  horizontal flip), labelled with the fp32 model's own top-1 prediction on that view (a
  "reference prediction" target: the search asks which layers can be quantized without changing
  what the fp32 model says, not whether the model is right; the true label is unknown for most
  crops anyway). The evaluation images (the 20 originals, resize 256 + center crop 224) are thus
  the *sources* of the calibration views: there is no held-out ImageNet data here.
* Methods: infoq (package defaults), hawq (Hutchinson trace x weight MSE, `--hutchinson`
  samples), weight_mse, random (seed 0), plus uniform 2-bit as a no-search baseline; all through
  the same ILP and the same quantizer. The search uses the plain min-max quantizer; the chosen
  policies are then applied both without and with `clip_search` (per-channel clipping-ratio
  search minimising weight MSE).
* Metrics on the 20 center-cropped originals, against fp32: top-1 agreement, mean KL(fp32 || q),
  mean probability the quantized model gives the fp32 top-1 class (fp32's own value in its row),
  and top-1 correct vs the foolbox labels (fp32: 18/20).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F

import infoq_hf
from infoq_hf import Budget

from . import assets, common

FIRST = "features.0.0"
LAST = "classifier.1"


def calibration_set(model, images, views: int, px: int, seed: int, batch_size: int):
    """`views` seeded random-resized-crop + flip views per image, labelled by the fp32 model's top-1."""
    from torchvision import transforms

    aug = transforms.Compose(
        [
            transforms.RandomResizedCrop(px, scale=(0.25, 1.0)),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(assets.IMAGENET_MEAN, assets.IMAGENET_STD),
        ]
    )
    torch.manual_seed(seed)  # torchvision's random transforms draw from the global generator
    xs, truth = [], []
    for img, label in images:
        for _ in range(views):
            xs.append(aug(img.convert("RGB")))
            truth.append(label)
    x = torch.stack(xs)
    with torch.no_grad():
        y = torch.cat([model(c).argmax(-1) for c in x.split(batch_size)])
    truth = torch.tensor(truth)
    batches = [(a, b) for a, b in zip(x.split(batch_size), y.split(batch_size))]
    info = {
        "samples": len(y),
        "distinct_labels": int(y.unique().numel()),
        "label_is_true_class": int((y == truth).sum()),
    }
    return batches, info


@torch.no_grad()
def evaluate(model, x, ref_logits, labels) -> dict:
    logits = model(x)
    ref_top = ref_logits.argmax(-1)
    logp, ref_logp = F.log_softmax(logits, -1), F.log_softmax(ref_logits, -1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    return {
        "agree": int((logits.argmax(-1) == ref_top).sum()),
        "correct": int((logits.argmax(-1) == labels).sum()),
        "kl": float(kl.mean()),
        "p_ref": float(logp.exp().gather(1, ref_top[:, None]).mean()),
    }


def allocate_14x(table, budget: Budget):
    """ILP with the classifier free and the first conv pinned at 8 bits when that is feasible."""
    try:
        return infoq_hf.allocate(table, budget, pin_first_last=False, pin={FIRST: 8}), True
    except ValueError as e:
        if not hasattr(e, "achievable"):
            raise
        return infoq_hf.allocate(table, budget, pin_first_last=False), False


def bit_string(policy, names) -> str:
    return "".join(str(policy[n].w_bits) for n in names)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--views", type=int, default=4, help="augmented views per foolbox image (calibration = 20 x views)")
    p.add_argument("--calib-px", type=int, default=128, help="side of the calibration crops (evaluation is always 224)")
    p.add_argument("--hutchinson", type=int, default=2, help="Hutchinson samples for hawq")
    p.add_argument("--bits", default="2,3,4,8")
    p.add_argument("--methods", default="infoq,hawq,weight_mse,random")
    p.add_argument("--avg-bits", type=float, default=2.29)
    p.add_argument("--compression", type=float, default=14.0)
    p.add_argument(
        "--context-bits", default="4,6", help="looser avg-bits budgets for context, comma-separated ('' for none)"
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=40)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/mobilenet_v2.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    bits = [int(b) for b in args.bits.split(",")]
    methods = args.methods.split(",")

    model = assets.mobilenet_v2().eval()
    images = assets.foolbox_images("imagenet")
    pre = assets.imagenet_preprocess()
    x_eval = torch.stack([pre(img.convert("RGB")) for img, _ in images])
    labels = torch.tensor([lab for _, lab in images])
    with torch.no_grad():
        ref_logits = model(x_eval)
    fp32 = evaluate(model, x_eval, ref_logits, labels)
    calib, cinfo = calibration_set(model, images, args.views, args.calib_px, args.seed, args.batch_size)
    print(f"fp32: {fp32['correct']}/20 correct; calibration {cinfo}", flush=True)

    layers = infoq_hf.quantizable_layers(model)
    names = list(layers)
    n_weights = sum(m.weight.numel() for m in layers.values())
    state = {k: v.clone() for k, v in model.state_dict().items()}

    tables, cost = {}, {}
    for method in methods:
        t0 = time.perf_counter()
        kw = {"hutchinson_samples": args.hutchinson} if method == "hawq" else {}
        kw = common.PROBED_CALIBRATED if method == "infoq" else kw
        tables[method] = infoq_hf.search(model, calib, bits=bits, method=method, seed=args.seed, progress=False, **kw)
        cost[method] = time.perf_counter() - t0
        print(f"search {method}: {cost[method]:.1f} s", flush=True)
        assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items()), (
            f"{method} search changed the model"
        )

    # Pinning first and last at 8 bits: infeasible at 14x.
    infeasible = []
    for budget in (Budget(avg_bits=args.avg_bits), Budget(compression=args.compression)):
        try:
            infoq_hf.allocate(tables[methods[0]], budget, pin_first_last=True)
            infeasible.append(f"{budget.to_dict()} with first+last pinned at 8 bits: FEASIBLE (unexpected)")
        except ValueError as e:
            if not hasattr(e, "achievable"):
                raise
            infeasible.append(f"{budget.to_dict()} with first+last pinned at 8 bits: {e}")
        print(infeasible[-1], flush=True)

    budgets = [
        ("avg 2.29 b", Budget(avg_bits=args.avg_bits)),
        (f"{args.compression:g}x incl. scales", Budget(compression=args.compression)),
    ]
    for cb in (float(c) for c in args.context_bits.split(",") if c.strip()):
        budgets.append((f"context: avg {cb:g} b", Budget(avg_bits=cb)))

    rows, bitstrings = [], {}
    uniform = infoq_hf.BitPolicy({n: {"w_bits": 2, "a_bits": None} for n in names})
    plans = [("uniform 2-bit", "-", uniform, None)]
    for label, budget in budgets:
        for method in methods:
            policy, first_pinned = allocate_14x(tables[method], budget)
            plans.append((method, label, policy, first_pinned))
            bitstrings[(method, label)] = bit_string(policy, names)
    for method, label, policy, _first_pinned in plans:
        for clip in (False, True):
            q = infoq_hf.quantize_model(copy.deepcopy(model), policy, clip_search=clip)
            r = evaluate(q, x_eval, ref_logits, labels)
            wb = {n: policy[n].w_bits for n in names}
            avg = sum(wb[n] * layers[n].weight.numel() for n in names) / n_weights
            rows.append(
                {
                    "method": method,
                    "budget": label,
                    "clip": clip,
                    **r,
                    "avg_bits": avg,
                    "compression": infoq_hf.compression_ratio(q),
                    "size_mb": infoq_hf.model_size_bytes(q) / 1e6,
                    "first": wb[FIRST],
                    "last": wb[LAST],
                    "hist": dict(sorted(Counter(wb.values()).items())),
                }
            )
            print(rows[-1], flush=True)
    total = time.perf_counter() - started

    cmd = "python -m benchmarks.mobilenet " + " ".join(sys.argv[1:] if argv is None else argv)
    out = [
        "# MobileNetV2 at 14x weight compression (post-training, no QAT)",
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Machine: {common.machine()}  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M')}; total wall time {total:.0f} s",
        "",
        f"Calibration: {cinfo['samples']} views ({args.views} per foolbox image, RandomResizedCrop({args.calib_px}, "
        f"scale 0.25-1) + flip, seed {args.seed}), "
        f"labels = fp32 top-1 on each view ({cinfo['distinct_labels']} distinct "
        f"classes; {cinfo['label_is_true_class']}/{cinfo['samples']} equal the image's true label). "
        f"Candidate bits {bits}; per-output-channel asymmetric weights; activations fp32.",
        "",
        "Search cost (s, this machine): "
        + ", ".join(f"{m} {cost[m]:.0f}" for m in methods)
        + f" (hawq: {args.hutchinson} Hutchinson samples).",
        "",
        "First and last layer pinned at 8 bits:",
        "",
        *[f"- {s}" for s in infeasible],
        "",
        f"fp32: {fp32['correct']}/20 correct, agreement 20/20, KL 0, p(fp32 top-1) = {fp32['p_ref']:.3f}. "
        "Policies: classifier free, first conv pinned at 8 bits (column `first`).",
        "",
        "| method | budget | clip search | agree /20 | correct /20 "
        "| mean KL | p(fp32 top-1) | avg bits | compression incl. scales | size MB | first | classifier "
        "| layers per bit-width |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| fp32 | - | - | 20 | {fp32['correct']} | 0 | {fp32['p_ref']:.3f} | 32 | 1.00x | "
        f"{infoq_hf.model_size_bytes(model) / 1e6:.2f} | 32 | 32 | - |",
    ]
    for r in rows:
        hist = ", ".join(f"{b}b:{c}" for b, c in r["hist"].items())
        out.append(
            f"| {r['method']} | {r['budget']} | {'yes' if r['clip'] else 'no'} | {r['agree']} | {r['correct']} | "
            f"{r['kl']:.3f} | {r['p_ref']:.3f} | {r['avg_bits']:.3f} | {r['compression']:.2f}x | "
            f"{r['size_mb']:.3f} | {r['first']} | {r['last']} | {hist} |"
        )
    out += [
        "",
        "Per-layer weight bits (module order, 53 layers: features.0.0 ... features.18.0, classifier.1 last):",
        "",
    ]
    for (method, label), s in bitstrings.items():
        out.append(f"- {method:10s} {label:22s} `{s}`")
    out += [
        "",
        "Notes:",
        "",
        "- 14x is a post-QAT operating point in the paper; here nothing is retrained, so absolute quality at "
        "~2.3 bits is expected to be poor for every method. The comparison is between allocations under "
        "the same budget, ILP and quantizer.",
        "- 20 images: top-1 agreement moves in steps of 5%, and one image flipping is within noise; mean KL and "
        "p(fp32 top-1) use the full output distribution and separate policies better, but they are still 20 "
        "images, and these are the very images whose crops formed the calibration set (no held-out data). "
        "A difference of a few images in agreement, or KL differences much smaller than the KL itself, "
        "should not be read as one method beating another.",
        "- `size MB` is the whole stored model (packed weights + scales/zero points + fp32 BatchNorm and "
        "biases); `compression` counts only the quantized weights, with their scales and zero points.",
        "- `avg 2.29 b` is the paper's weight-only count; counting 5 bytes of scale + zero point per output "
        "channel that policy is about 12.8x. `14x incl. scales` forces ~2.08 average bits (uniform 2-bit is "
        "14.49x); putting the 1.28 M-weight classifier at 2 bits is what leaves room for 3-4 bits elsewhere.",
        f"- The search scores were measured with the plain min-max quantizer; `clip search = yes` applies the "
        f"same policies with per-channel clipping search. Calibration crops are {args.calib_px} px to keep the "
        "run within the CPU time budget; evaluation uses 224 px.",
    ]
    if "hawq" in tables:
        traces = tables["hawq"].meta.get("hessian_trace", {})
        neg = [n for n, v in traces.items() if v <= 0]
        out.append(
            f"- hawq: {len(neg)} of {len(traces)} Hutchinson trace estimates are <= 0 with {args.hutchinson} "
            f"samples ({', '.join(neg[:6])}{', ...' if len(neg) > 6 else ''}); a non-positive trace makes the "
            "score of every bit-width <= 0, so the ILP sends those layers to 2 bits whatever the budget."
        )
    text = "\n".join(out) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
