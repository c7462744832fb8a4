"""SmolLM2-135M: AutoScheme's allocations beside ours, one table, written to
benchmarks/results/autoscheme_smollm2.md with the commands that made it.

    bash benchmarks/peers/autoscheme_venv.sh
    flock /tmp/infoq-heavy.lock /tmp/infoq-autoscheme-venv/bin/python -m benchmarks.peers.autoscheme_policy \\
        --avg-bits 3.0 3.5 --own-eval
    flock /tmp/infoq-heavy.lock env PYTHONPATH=. /work/venv/bin/python -m benchmarks.peers.autoscheme_table \\
        --budgets 3.0 3.5 --methods infoq weight_mse

Runs benchmarks/compare.py (project venv) at each budget with `--policy-file autoscheme=<that budget's
JSON>`, in a work folder of its own (`--work`, where compare caches its sensitivity tables), so
benchmarks/results/compare_smollm2.md is left as it is. Below compare's table it adds what AutoScheme
chose: its wall time and, per projection, the mean width it gave.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from .. import compare

POLICIES = Path("benchmarks/results/policies")
PEER_COMMAND = (
    "flock /tmp/infoq-heavy.lock /tmp/infoq-autoscheme-venv/bin/python -m benchmarks.peers.autoscheme_policy "
    "--avg-bits {bits} --own-eval"
)

TABLE_COMMAND = (
    "flock /tmp/infoq-heavy.lock env PYTHONPATH=. /work/venv/bin/python -m benchmarks.peers.autoscheme_table"
)


def intro(record: dict) -> str:
    """What the rows are, from one of AutoScheme's JSON records."""
    calib = record["calibration"]
    own = record.get("own", {}).get("rounding", "-")
    return (
        f"AutoScheme from auto-round {record['versions']['auto_round']} (torch {record['versions']['torch']}, "
        f"its own venv, CPU): options int {{2,3,4,8}}-bit weights, asymmetric, group {record['group_size']}, "
        f"weight bits only (`ignore_scale_zp_bits`), scored on our {calib['windows']}x{calib['seq_len']} "
        "calibration windows (common.smollm2_data's, served to its loader). Row `autoscheme`: its widths "
        "packed by our pipeline (the rounding in the last column, our calibration and group size), no "
        f"whole-model check. Row `autoscheme (its own rounding)`: AutoRound's own end-to-end quantization "
        f"({own}) on the same dev/test windows (checked by a digest of their token ids). AutoScheme scores on "
        "all the calibration windows; the pipeline's own searches (infoq, weight_mse) on the first 4, as the main "
        "job. Wall times are from the shared 2-core machine under other load: indicative only."
    )


def width_summary(records: dict[float, dict]) -> list[str]:
    """Per budget: AutoScheme's wall time, layers per width and the mean width of each projection."""
    kinds = sorted({name.rsplit(".", 1)[-1] for r in records.values() for name in r["layers"]})
    lines = [
        "| budget | AutoScheme wall s | avg bits (ours) | layers at 2/3/4/8 | " + " | ".join(kinds) + " |",
        "|---" * (4 + len(kinds)) + "|",
    ]
    for budget, r in sorted(records.items()):
        layers = r["layers"]
        counts = "/".join(str(sum(1 for b in layers.values() if b == w)) for w in (2, 3, 4, 8))
        means = []
        for kind in kinds:
            widths = [b for n, b in layers.items() if n.rsplit(".", 1)[-1] == kind]
            means.append(f"{sum(widths) / len(widths):.2f}")
        wall = r.get("autoscheme_wall_s")
        lines.append(
            f"| {budget} | {wall:.0f} | {r['avg_bits']:.3f} | {counts} | " + " | ".join(means) + " |"
            if wall is not None
            else f"| {budget} | - | {r['avg_bits']:.3f} | {counts} | " + " | ".join(means) + " |"
        )
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", type=float, nargs="+", default=[3.0, 3.5])
    p.add_argument("--methods", nargs="+", default=["infoq", "weight_mse"], choices=compare.METHODS)
    p.add_argument("--policies", default=str(POLICIES), help="where autoscheme_policy.py wrote its JSON files")
    p.add_argument("--work", default="/tmp/infoq-autoscheme-compare", help="compare.py's --out (its table cache)")
    p.add_argument("--out", default="benchmarks/results/autoscheme_smollm2.md")
    p.add_argument("--rewrite", action="store_true", help="only rewrite --out from the compare table in --work")
    p.add_argument("compare_args", nargs=argparse.REMAINDER, help="after --: more arguments for compare.py")
    args = p.parse_args(argv)
    records, specs = {}, []
    for budget in args.budgets:
        path = Path(args.policies) / f"autoscheme_smollm2_{budget:g}.json"
        if not path.is_file():
            raise SystemExit(f"no AutoScheme policy at {path}; make it with: {PEER_COMMAND.format(bits=budget)}")
        records[budget] = json.loads(path.read_text())
        specs += ["--policy-file", f"autoscheme={path}"]
    extra = [a for a in args.compare_args if a != "--"]
    compare_argv = [
        "--model",
        "smollm2",
        "--budgets",
        *map(str, args.budgets),
        "--methods",
        *args.methods,
        *specs,
        "--out",
        args.work,
        *extra,
    ]
    if not args.rewrite:
        compare.main(compare_argv)
    table = (Path(args.work) / "compare_smollm2.md").read_text().rstrip("\n")
    first = next(iter(records.values()))
    text = "\n".join(
        [
            "# AutoRound AutoScheme beside InfoQ on SmolLM2-135M",
            "",
            intro(first),
            "",
            table,
            "",
            "What AutoScheme chose (mean width per projection over the 30 blocks):",
            "",
            *width_summary(records),
            "",
            "Commands:",
            "",
            "    bash benchmarks/peers/autoscheme_venv.sh",
            "    " + PEER_COMMAND.format(bits=" ".join(f"{b:g}" for b in args.budgets)),
            f"    {TABLE_COMMAND} "
            + shlex.join(a for a in (sys.argv[1:] if argv is None else argv) if a != "--rewrite"),
            "",
        ]
    )
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
