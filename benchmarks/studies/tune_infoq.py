"""Tune InfoQ's estimator choices against the oracle on the DEV split (never the test split).

    python -m benchmarks.studies.tune_infoq --model smollm2 --only 'model\\.layers\\.(3|15|27)\\..*'

Loads the oracle table cached by `benchmarks.spearman --split dev` with the same settings
(run that first), then scores several InfoQ option sets on the same calibration data and
prints their Spearman correlations with the oracle.

    python -m benchmarks.studies.tune_infoq --model smollm2 --only 'model\.layers\.(3|15|27)\..*' --calibrated

`--calibrated` chooses the probe width of the calibrated costs S = alpha_l * t2(l, b) on the
CALIBRATION data alone (no oracle needed): one Eq. 4 search without the 1/b factor gives the
information change D(l, b) at every width; if D were proportional to t2, alpha_l = D / t2 would be
the same at every width. Saturation (large perturbations) shows as a smaller alpha at low widths,
estimator noise (tiny perturbations) as alphas that stop agreeing across layers at high widths. The
printout gives, per width, the median ratio of its alpha to its neighbours' and the rank agreement
of its alphas with the other widths'. Where a dev-split oracle is cached (`benchmarks.spearman
--split dev`), the costs from each width are also compared with it.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from infoq_hf.sensitivity import SensitivityTable, search

from .. import common
from ..compare import cached_table
from ..spearman import correlations, load_setup, oracle_cache

PROBED = common.PROBED_CALIBRATED  # these option sets were compared with the paper's probes, calibrated
CANDIDATES = {
    "default": {},
    "classes=8": {"lm_classes": 8},
    "classes=16": {"lm_classes": 16},
    "refpred,classes=16": {"lm_target": "reference_prediction", "lm_classes": 16},
    "task only": {"input_weight": 0.0},
    "input only": {"task_weight": 0.0},
    "task only,classes=8": {"input_weight": 0.0, "lm_classes": 8},
    "K=256": {"num_directions": 256},
    "task obs=all": {"task_observers": "all"},
    "gaussian": {"estimator": "gaussian"},
    "gaussian,classes=8": {"estimator": "gaussian", "lm_classes": 8},
    "gaussian,task only": {"estimator": "gaussian", "input_weight": 0.0},
    "gaussian,input only": {"estimator": "gaussian", "task_weight": 0.0},
    "gaussian,refpred": {"estimator": "gaussian", "lm_target": "reference_prediction"},
}


def calibrated_choices(model, calib, kwargs, bits, oracle, seed, out: Path) -> list[str]:
    tokens, skipped = sum(len(b["input_ids"]) for b in calib), len(kwargs.get("skip_modules", []))
    key = f"c{tokens}_s{seed}_b{''.join(map(str, bits))}_n{skipped}"
    raw = cached_table(
        out / "tables" / f"tune_raw_{key}.json",
        False,
        lambda: search(
            model,
            calib,
            bits=bits,
            method="infoq",
            seed=seed,
            progress=False,
            **{**common.PROBED_CALIBRATED, "scores": "eq4", "inv_bits": False},
            **kwargs,
        ),
    )
    mse = search(model, calib, bits=bits, method="weight_mse", seed=seed, progress=False, **kwargs)
    names = list(raw.layers)
    t2 = {n: {b: mse.w(n, b) / _sq_norm(model, n) for b in bits} for n in names}
    # Exponent of the information change in the weight error: D ~ c * t2^gamma, per layer over the widths.
    slopes = []
    for n in names:
        xs = [math.log(t2[n][b]) for b in bits]
        ys = [math.log(max(raw.w(n, b), 1e-300)) for b in bits]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        slopes.append(sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs))
    lines = [
        f"Exponent gamma of D(l, b) ~ t2(l, b)^gamma, fitted per layer over widths {bits}: median "
        f"{statistics.median(slopes):.3f}, quartiles {statistics.quantiles(slopes, n=4)[0]:.3f} / "
        f"{statistics.quantiles(slopes, n=4)[2]:.3f} (1 = D proportional to t2; 0.5 = first order in the "
        "perturbation's amplitude)",
        "",
        "| alpha_l from | probe width "
        "| median alpha / alpha at the other widths | Spearman of its alphas with the others' (mean) |",
        "|---|---|---|---|",
    ]
    for power, label in ((1, "D / t2"), (2, "D^2 / t2")):
        alpha = {b: [raw.w(n, b) ** power / t2[n][b] for n in names] for b in bits}
        for b in bits:
            others = [o for o in bits if o != b]
            ratio = statistics.median(alpha[b][i] / max(alpha[o][i], 1e-300) for o in others for i in range(len(names)))
            agree = sum(common.spearman(alpha[b], alpha[o]) for o in others) / len(others)
            lines.append(f"| {label} | {b} bits | {ratio:.3f} | {agree:.3f} |")
            print(lines[-1], flush=True)
    if oracle is None:
        return lines
    lines += [
        "",
        "Against the dev-split oracle:",
        "",
        "| alpha from | Spearman, all | Spearman within a bit-width |",
        "|---|---|---|",
    ]
    for power in (1, 2):
        for b in bits:
            table = SensitivityTable.from_dict(raw.to_dict())
            for n, info in table.layers.items():
                a = raw.w(n, b) ** power / t2[n][b]
                info["w"] = {w: a * t2[n][w] for w in bits}
            overall, per_bit = correlations(table, oracle, bits)
            lines.append(f"| D^{power}/t2 at {b} bits | {overall:.3f} | {per_bit:.3f} |")
    return lines


def _sq_norm(model, name: str) -> float:
    return float((model.get_submodule(name).weight.detach().float() ** 2).sum())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["mnist_cnn", "smollm2"], required=True)
    p.add_argument("--bits", default="2,3,4")
    p.add_argument("--calib", type=int, default=None)
    p.add_argument("--heldout", type=int, default=None)
    p.add_argument("--only", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--candidates", default=";".join(CANDIDATES), help=";-separated names from CANDIDATES, or JSON dicts"
    )
    p.add_argument("--calibrated", action="store_true", help="choose the probe width of the calibrated costs")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    bits = [int(b) for b in args.bits.split(",")]
    default_calib = args.calib or (4 if args.model == "smollm2" else None)
    default_held = args.heldout or (8 if args.model == "smollm2" else None)
    model, calib, _, _, kwargs, calib_n, held_n = load_setup(args.model, default_calib, default_held, args.only)
    cache = oracle_cache(args.out, args.model, bits, calib_n, held_n, "dev", args.seed, args.only)
    if args.calibrated:
        oracle = SensitivityTable.load(cache) if cache.exists() else None
        lines = [
            f"Calibrated InfoQ costs: which probe width, {args.model}, bits {bits}, {calib_n} calibration "
            f"samples, layers {args.only or 'all'}; {common.machine()}",
            "",
            *calibrated_choices(model, calib, kwargs, bits, oracle, args.seed, Path(args.out)),
        ]
        text = "\n".join(lines)
        print(text)
        (Path(args.out) / f"tune_calibrated_{args.model}.md").write_text(text + "\n")
        return
    if not cache.exists():
        raise SystemExit(f"no cached dev oracle at {cache}; run benchmarks.spearman --split dev with the same settings")
    oracle = SensitivityTable.load(cache)
    lines = [
        f"InfoQ option sets vs the dev-split oracle, {args.model}, bits {bits}, {calib_n} calibration samples, "
        f"oracle on {held_n} dev samples, layers {args.only or 'all'}; {common.machine()}",
        "",
        "| options | Spearman, all | Spearman within a bit-width | wall s |",
        "|---|---|---|---|",
    ]
    for name in args.candidates.split(";"):
        opts = CANDIDATES[name] if name in CANDIDATES else json.loads(name)
        table = search(
            model, calib, bits=bits, method="infoq", seed=args.seed, progress=False, **kwargs, **{**PROBED, **opts}
        )
        overall, per_bit = correlations(table, oracle, bits)
        lines.append(
            f"| {name} `{json.dumps(opts)}` | {overall:.3f} | {per_bit:.3f} | {table.meta['cost']['wall_s']:.1f} |"
        )
        print(lines[-1], flush=True)
    text = "\n".join(lines)
    print(text)
    (Path(args.out) / f"tune_infoq_{args.model}.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
