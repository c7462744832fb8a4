"""Equal-budget comparison: InfoQ vs the baselines, same ILP, same quantizer, only the scores differ.

    python -m benchmarks.compare --model smollm2      # perplexity at 4.0 / 3.0 / 2.5 average bits
    python -m benchmarks.compare --model mnist_cnn    # top-1 at 3.0 bits (10.67x) and at a W/A BitOps budget
    python -m benchmarks.compare --model fashion_resnet --checkpoint out/fashion_resnet8.pt   # the same

On SmolLM2 InfoQ is also shown with the paper's Eq. 4 scores and with its allocation refined on
the whole model (`refine(allocate(...), model, calibration)`). Sensitivity tables are cached in benchmarks/results/tables/ (keyed by model, method, data
sizes and seed) so other budgets need no new probing; `--fresh` recomputes them. The
search cost of each method (wall time, forward passes, calibration samples) is reported
from the table's own metadata, i.e. from the run that produced it.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from infoq_hf import BitPolicy, Budget, allocate, quantizable_layers, quantize_model, refine, search
from infoq_hf.sensitivity import SensitivityTable

from . import common

METHODS = ["infoq", "hawq", "weight_mse", "random"]


def cached_table(path: Path, fresh: bool, compute) -> SensitivityTable:
    if path.exists() and not fresh:
        return SensitivityTable.load(path)
    table = compute()
    table.save(path)
    return table


def run_smollm2(args, out: Path):
    """Perplexity at 4.0 / 3.0 / 2.5 average bits: uniform, every method's ILP allocation, and InfoQ's
    allocation refined on the whole model (KL to fp32 on the calibration windows only)."""
    model, _, calib, _, test = common.smollm2_data(args.calib or 4, 0, args.eval or 32)
    skip = ["lm_head"]
    kw = dict(bits=(2, 3, 4, 8), group_size=64, skip_modules=skip, seed=args.seed)
    from infoq_hf.sensitivity.infoq import InfoQOptions

    defaults = InfoQOptions()
    calibrated = {"probe_bits": defaults.probe_bits, "change_power": defaults.change_power}
    searches = {"infoq": calibrated, "hawq": {}, "weight_mse": {}, "random": {}}
    if args.with_eq4:  # one probe per (layer, width): three times the calibrated search
        searches["infoq (paper Eq. 4)"] = {"scores": "eq4"}
    tables = {}
    for label, opts in searches.items():
        method = label.split()[0]
        key = method + "".join(f"_{k}{v}" for k, v in opts.items())
        tables[label] = cached_table(out / "tables" / f"smollm2_{key}_c{len(calib)}_s{args.seed}.json", args.fresh,
                                     lambda m=method, o=opts: search(model, calib, method=m, **kw, **o))
    fp32 = common.perplexity(model, test)
    rows = [("fp32 (from Q4_1 GGUF)", "-", 32.0, fp32, "")]
    refinements = []
    for budget in (4.0, 3.0, 2.5):
        if budget == int(budget):
            m = copy.deepcopy(model)
            names = quantizable_layers(m, skip_modules=skip)
            quantize_model(m, {n: int(budget) for n in names}, group_size=64, skip_modules=skip)
            rows.append((f"uniform {int(budget)}-bit", budget, budget, common.perplexity(m, test), ""))
        for label, table in tables.items():
            variants = [("", 0)] + ([(" + refinement", args.refine_passes)] if label == "infoq" else [])
            for suffix, passes in variants:
                policy = allocate(table, Budget(avg_bits=budget))
                if passes:
                    policy = refine(policy, model, calib, passes=passes, seed=args.seed)
                m = copy.deepcopy(model)
                quantize_model(m, policy, group_size=64, skip_modules=skip)
                r = policy.report.refinement
                note = "" if r is None else f"KL {r.kl_ilp:.3f} -> {r.kl_final:.3f} (from {r.start})"
                rows.append((label + suffix, budget, policy.report.avg_bits, common.perplexity(m, test), note))
                if r is not None:
                    refinements.append((budget, r))
                print(rows[-1], flush=True)
    header = (f"SmolLM2-135M weight-only, RTN, group 64, candidates {{2,3,4,8}}, calibration {len(calib) * 4}x128 tokens "
              f"(comedies/histories), perplexity on {args.eval or 32}x128 held-out tokens (tragedies); refinement: "
              f"{args.refine_passes} whole-model passes judged by KL to fp32 on the calibration tokens; "
              f"seed {args.seed}; {common.machine()}")
    table_md = ["| allocation | budget (avg bits) | achieved avg bits | perplexity | refinement (calibration KL) |",
                "|---|---|---|---|---|"]
    table_md += [f"| {a} | {b} | {c:.3f} | {d:.2f} | {e} |" for a, b, c, d, e in rows]
    table_md += ["", "Refinement cost (whole-model passes on the calibration tokens):", "",
                 "| budget | passes | accepted | start | wall s |", "|---|---|---|---|---|"]
    table_md += [f"| {b} | {r.passes} | {r.accepted} | {r.start} | {r.wall_s:.0f} |" for b, r in refinements]
    return header, table_md, tables


def run_mnist(args, out: Path):
    model, calib, _, test = common.mnist_data(args.calib or 512, 0, args.eval or 10000)
    name = f"MNIST CNN (ccexam, 4 layers), calibration {args.calib or 512} train images, top-1 on {args.eval or 10000} test images"
    return run_classifier("mnist_cnn", name, model, calib, test, args, out)


def run_fashion_resnet(args, out: Path):
    ckpt = Path(args.checkpoint)
    if not ckpt.exists():
        raise SystemExit(f"skipped: no Fashion-MNIST ResNet checkpoint at {ckpt}; train one with "
                         f"`python recipes/qat/train_fashion_mnist.py --epochs 3 --train-samples 20000 --out {ckpt}`")
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from recipes.common import fashion_mnist, tuple_batches
    from recipes.qat.resnet import load_checkpoint

    model, _ = load_checkpoint(ckpt)
    xtr, ytr, xte, yte = fashion_mnist(subsample_train=args.calib or 512, subsample_test=args.eval, seed=args.seed)
    calib, test = tuple_batches(xtr, ytr, 64), tuple_batches(xte, yte, 500)
    name = (f"Fashion-MNIST ResNet-8 ({ckpt.name}, trained by recipes/qat), calibration {len(ytr)} train images, "
            f"top-1 on {len(yte)} test images")
    return run_classifier("fashion_resnet", name, model.eval(), calib, test, args, out)


def run_classifier(key, name, model, calib, test, args, out: Path):
    """Top-1 at 3.0 average bits (10.67x) and at the BitOps of uniform W4A4 (activations quantized)."""
    kw = dict(bits=(2, 3, 4, 8), seed=args.seed, score_activations=True)
    tables = {}
    for m in METHODS:
        opts = {"score_activations": False} if m in ("hawq", "weight_mse", "random") else {}
        tables[m] = cached_table(out / "tables" / f"{key}_{m}_c{len(calib)}_s{args.seed}.json", args.fresh,
                                 lambda m=m, opts=opts: search(model, calib, method=m, **{**kw, **opts}))
    x0 = calib[0][0][:1]
    rows = [("fp32", "-", 32.0, "-", common.top1(model, test))]
    names = list(quantizable_layers(model))
    m = copy.deepcopy(model)
    quantize_model(m, {n: 3 for n in names})
    rows.append(("uniform 3-bit", "3.0 avg bits (10.67x)", 3.0, "-", common.top1(m, test)))
    refined = dict(passes=args.refine_passes, seed=args.seed, progress=False)
    for method, table in tables.items():
        for suffix, extra in [("", None)] + ([(" + refinement", refined)] if method == "infoq" else []):
            policy = allocate(table, Budget(avg_bits=3.0), pin_first_last=False)
            policy = refine(policy, model, calib, **extra) if extra else policy
            m = copy.deepcopy(model)
            quantize_model(m, policy)
            rows.append((method + suffix, "3.0 avg bits (10.67x)", policy.report.avg_bits, "-", common.top1(m, test)))
    # W/A: BitOps budget = that of uniform W4A4, activations chosen from {4, 8} where scored.
    from infoq_hf import bitops, calibrate_activation_ranges
    w4a4 = BitPolicy({n: {"w_bits": 4, "a_bits": 4} for n in names})
    budget_ops = bitops(model, w4a4, x0)
    m = copy.deepcopy(model)
    quantize_model(m, w4a4, act_ranges=calibrate_activation_ranges(m, [b[0] for b in calib], w4a4))
    rows.append(("uniform W4A4", f"BitOps {budget_ops / 1e6:.1f}M", 4.0, 4, common.top1(m, test)))
    for method, table in tables.items():
        wa = {"act_bits": [4, 8]} if table.has_activation_scores else {"fixed_a_bits": 4}
        label = method + (" (W/A scores)" if table.has_activation_scores else " (weights only, A4)")
        for suffix, extra in [("", None)] + ([(" + refinement", refined)] if method == "infoq" else []):
            policy = allocate(table, Budget(bitops=budget_ops), pin_first_last=False, **wa)
            policy = refine(policy, model, calib, **extra) if extra else policy
            m = copy.deepcopy(model)
            ranges = calibrate_activation_ranges(m, [b[0] for b in calib], policy)
            quantize_model(m, policy, act_ranges=ranges)
            a_mean = sum(lb.a_bits for lb in policy.values()) / len(policy)
            rows.append((label + suffix, f"BitOps {budget_ops / 1e6:.1f}M", policy.report.avg_bits, round(a_mean, 2),
                         common.top1(m, test)))
    header = (f"{name}; candidates {{2,3,4,8}}, first/last not pinned; refinement {args.refine_passes} passes judged by "
              f"KL to fp32 on the calibration images; seed {args.seed}; {common.machine()}")
    table_md = ["| allocation | budget | avg weight bits | mean act bits | top-1 % |", "|---|---|---|---|---|"]
    table_md += [f"| {a} | {b} | {c:.3f} | {d} | {e:.2f} |" for a, b, c, d, e in rows]
    return header, table_md, tables


def cost_table(tables: dict) -> list[str]:
    lines = ["| method | search wall s | forward passes | layer evals | calibration batches |", "|---|---|---|---|---|"]
    for method, t in tables.items():
        c = t.meta["cost"]
        batches = (t.meta.get("calibration") or {}).get("batches", 0)
        lines.append(f"| {method} | {c['wall_s']:.1f} | {c['forward_passes']} | {c['layer_evals']} | {batches} |")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["smollm2", "mnist_cnn", "fashion_resnet"], required=True)
    p.add_argument("--checkpoint", default="out/fashion_resnet8.pt", help="fashion_resnet: the fp32 checkpoint")
    p.add_argument("--calib", type=int, default=None)
    p.add_argument("--eval", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true", help="recompute cached sensitivity tables")
    p.add_argument("--refine-passes", type=int, default=64, help="whole-model passes of the refinement")
    p.add_argument("--with-eq4", action="store_true", help="smollm2: also InfoQ with the paper's Eq. 4 scores")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    out = Path(args.out)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    runner = {"smollm2": run_smollm2, "mnist_cnn": run_mnist, "fashion_resnet": run_fashion_resnet}[args.model]
    header, rows, tables = runner(args, out)
    text = "\n".join([header, "", *rows, "", "Search cost (from the run that produced each table):", "",
                      *cost_table(tables)])
    print(text)
    (out / f"compare_{args.model}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
