"""How well does each sensitivity measure rank (layer, bits) like the oracle does?

    python -m benchmarks.spearman --model mnist_cnn
    python -m benchmarks.spearman --model smollm2 --calib 16 --heldout 16

The oracle is the true change of the task loss on held-out data when only one layer is
quantized (the rest at the 8-bit reference). `--split dev` evaluates the oracle on the
development data used to tune the InfoQ estimator choices; `--split test` (default) on
data never used for tuning. Prints a Markdown table and writes JSON next to it.

Two correlations: over all (layer, bits) pairs, which any score monotone in bits gets
mostly right, and the mean over bit-widths of the per-bit rank correlation across layers,
which is the part that decides a mixed-precision allocation.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import time
from pathlib import Path

from infoq_hf import quantizable_layers
from infoq_hf.sensitivity import SensitivityTable, search

from . import common


def correlations(table, oracle, bits) -> tuple[float, float]:
    names = list(table.layers)
    xs = [table.w(n, b) for n in names for b in bits]
    ys = [oracle.w(n, b) for n in names for b in bits]
    overall = common.spearman(xs, ys)
    per_bit = [common.spearman([table.w(n, b) for n in names], [oracle.w(n, b) for n in names]) for b in bits]
    return overall, sum(per_bit) / len(per_bit)


def load_setup(model_name: str, calib: int | None, heldout: int | None, only: str | None):
    """Model, calibration/dev/test batches and search kwargs (layers outside `only` skipped)."""
    if model_name == "mnist_cnn":
        calib_n, held_n = calib or 512, heldout or 2000
        model, calib_b, dev, test = common.mnist_data(calib_n, held_n, held_n)
        kwargs = {}
    else:
        calib_n, held_n = calib or 16, heldout or 16
        model, _, calib_b, dev, test = common.smollm2_data(calib_n, held_n, held_n)
        kwargs = {"group_size": 64, "skip_modules": ["lm_head"]}
    if only:
        kwargs["skip_modules"] = kwargs.get("skip_modules", []) + [
            n for n in quantizable_layers(model) if not re.fullmatch(only, n)
        ]
    return model, calib_b, dev, test, kwargs, calib_n, held_n


def oracle_cache(out, model_name, bits, calib_n, held_n, split, seed, only) -> Path:
    """Where the oracle table of these settings is cached (it is the costliest table to compute)."""
    key = hashlib.sha256(repr((model_name, bits, calib_n, held_n, split, seed, only)).encode()).hexdigest()[:12]
    return Path(out) / "tables" / f"oracle_{model_name}_{key}.json"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["mnist_cnn", "smollm2"], required=True)
    p.add_argument("--bits", default="2,3,4")
    p.add_argument(
        "--methods",
        default="infoq,infoq:eq4,hawq,weight_mse,random",
        help="comma-separated; infoq:eq4 is InfoQ with the paper's Eq. 4 scores",
    )
    p.add_argument("--calib", type=int, default=None, help="calibration samples (images or 128-token windows)")
    p.add_argument("--heldout", type=int, default=None, help="held-out samples for the oracle")
    p.add_argument("--split", choices=["dev", "test"], default="test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--infoq", default="{}", help='JSON dict of InfoQ options, e.g. \'{"lm_target": "reference_prediction"}\''
    )
    p.add_argument(
        "--only",
        default=None,
        help="regex of layer names to probe (others stay at the reference), e.g. 'model\\.layers\\.(0|10|20|29)\\..*'",
    )
    p.add_argument("--tag", default="", help="suffix of the output file names")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    bits = [int(b) for b in args.bits.split(",")]
    model, calib, dev, test, kwargs, calib_n, held_n = load_setup(args.model, args.calib, args.heldout, args.only)
    heldout = dev if args.split == "dev" else test
    started = time.perf_counter()
    cache = oracle_cache(args.out, args.model, bits, calib_n, held_n, args.split, args.seed, args.only)
    if cache.exists():
        oracle = SensitivityTable.load(cache)
    else:
        oracle = search(model, calib, bits=bits, method="oracle", heldout=heldout, seed=args.seed, **kwargs)
        oracle.save(cache)
    rows = [("oracle", 1.0, 1.0, oracle.meta["cost"])]
    tables = {"oracle": oracle.to_dict()}
    for label in args.methods.split(","):
        method, _, variant = label.partition(":")  # "infoq:eq4" = InfoQ with the paper's Eq. 4 scores
        opts = {**common.PROBED_CALIBRATED, **json.loads(args.infoq)} if method == "infoq" else {}
        if variant:
            opts["scores"] = variant
        table = search(model, calib, bits=bits, method=method, seed=args.seed, **kwargs, **opts)
        overall, per_bit = correlations(table, oracle, bits)
        rows.append((label, overall, per_bit, table.meta["cost"]))
        tables[label] = table.to_dict()
    lines = [
        f"Spearman correlation with the oracle, {args.model}, bits {bits}, {calib_n} calibration samples, "
        f"oracle on {held_n} held-out samples ({args.split} split), seed {args.seed}"
        + (f", layers matching {args.only!r}" if args.only else "")
        + f", InfoQ options {args.infoq}; {common.machine()}",
        "",
        "| method | Spearman, all (layer, bits) | Spearman within a bit-width (mean) "
        "| wall s | layer evals | forward passes |",
        "|---|---|---|---|---|---|",
    ]
    for method, overall, per_bit, cost in rows:
        lines.append(
            f"| {method} | {overall:.3f} | {per_bit:.3f} | {cost['wall_s']:.1f} | {cost['layer_evals']} | "
            f"{cost['forward_passes']} |"
        )
    text = "\n".join(lines)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = (
        f"spearman_{args.model}_{args.split}" + ("_subset" if args.only else "") + (f"_{args.tag}" if args.tag else "")
    )
    (out / f"{stem}.md").write_text(text + "\n")
    (out / f"{stem}.json").write_text(
        json.dumps({"args": vars(args), "tables": tables, "wall_s": time.perf_counter() - started}, indent=1)
    )


if __name__ == "__main__":
    main()
