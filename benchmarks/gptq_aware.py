"""GPTQ-aware allocation on SmolLM2-135M: the InfoQ policy for GPTQ packing, with costs and refinement
from round-to-nearest (before) and from GPTQ's own errors and weights (the product's default now).

    python -m benchmarks.gptq_aware      # ~40 min on 2 CPU cores; writes benchmarks/results/gptq_aware_smollm2.md
    python -m benchmarks.gptq_aware --rows refined --judge-batches 2 --budgets 3.0,2.5   # a larger refinement judge
    python -m benchmarks.gptq_aware --rows refined --budgets 3.0 --refine-seeds 1,2      # the refinement's spread
    python -m benchmarks.gptq_aware --rows baselines --budgets 2.5   # InfoQ / hawq / weight_mse / random, ILP only
    python -m benchmarks.gptq_aware --rows refined --budgets 2.5 --refine-chains 3   # the product's allocation
    ... --cache out/candidates   # keep the GPTQ candidates (0.5 GB per kind of inputs) for the next run

Each run also writes the widths every row packed to `results/policies/`.

Same data, table and settings as `benchmarks/gptq.py` (calibration works: the first 4 windows are
the search and refinement calibration, all 32 the GPTQ calibration; dev windows choose, test windows
after them only report). Every row is packed with sequential GPTQ on the 32 windows. Rows:
- RTN costs + RTN-judged refinement: what the pipeline allocated for GPTQ packing before (3.0 bits only;
  the other budgets are in gptq_smollm2.md, produced by the same code);
- GPTQ costs, ILP only: `with_gptq_costs` (the error ratios of `gptq_candidates` on the 32 windows,
  rounded, as the pipeline does, on the inputs of the budget's uniform start: `--candidate-inputs
  prefix`; `float` for the float model's inputs);
- GPTQ costs + GPTQ-judged refinement: the refinement evaluates candidates with GPTQ's rounded weights
  (the same prefix-input candidates, as the pipeline does; `split` judges float-input ones), runs
  `--refine-chains` chains, and (as the pipeline does with `search_samples`) checks its result on the
  next calibration windows against its starts (`--held-out-batches`, 0 = no check).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
import time
from pathlib import Path

import torch

from infoq_hf import Budget, allocate, refine, search
from infoq_hf.allocation import uniform_start
from infoq_hf.quant.gptq import GPTQOptions, gptq_candidates, gptq_quantize_model
from infoq_hf.sensitivity.rounding_costs import with_gptq_costs

from . import common
from .compare import cached_table
from .gptq import GROUP, SEARCH_BATCHES, SKIP, peak_rss_mib

REFINE_PASSES = 64  # the refined rows study random moves (the product makes none by default)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--calib", type=int, default=32)
    p.add_argument("--dev", type=int, default=16)
    p.add_argument("--eval", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--refine-passes", type=int, default=REFINE_PASSES, help="moves per refined row's chain")
    p.add_argument("--budgets", default="4.0,3.0,2.5")
    p.add_argument(
        "--judge-batches",
        type=int,
        default=SEARCH_BATCHES,
        help="calibration batches of 4 windows the refinement judges on (default: the search's)",
    )
    p.add_argument(
        "--held-out-batches",
        type=int,
        default=None,
        help="calibration batches after the judge's for the refinement's held-out check (default: as many "
        "as the judge's; 0: none)",
    )
    p.add_argument(
        "--rows",
        default="all",
        choices=["all", "refined", "baselines"],
        help="refined: only the GPTQ-aware refined rows; baselines: InfoQ's and the other methods' tables "
        "(the `benchmarks.compare` searches), GPTQ-scaled, ILP only",
    )
    p.add_argument(
        "--refine-chains",
        type=int,
        default=1,
        help="chains per refined row (the product's default is 3; the held-out check picks among them)",
    )
    p.add_argument(
        "--refine-seeds",
        default=None,
        help="comma-separated seeds of the refinement's random moves (default: --seed); one row each",
    )
    p.add_argument(
        "--candidate-inputs",
        default="prefix",
        choices=["prefix", "float", "split"],
        help="GPTQ candidates rounded on the inputs of the budget's uniform start (the pipeline's choice, for "
        "the costs and the judge), or on the float model's; split: the costs (and so the ILP start) from the "
        "prefix ones, the refinement judging the float ones",
    )
    p.add_argument(
        "--cache",
        default=None,
        help="a folder to keep the GPTQ candidates in (about 0.5 GB per kind of inputs), so later runs on "
        "the same data skip them; default: computed every run",
    )
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    out = Path(args.out)
    torch.manual_seed(args.seed)
    model, _, calib, dev, test = common.smollm2_data(args.calib, args.dev, args.eval)
    search_calib = calib[:SEARCH_BATCHES]
    table = cached_table(
        out / "tables" / f"smollm2_infoq_calibrated_c{len(search_calib)}_s{args.seed}.json",
        False,
        lambda: search(
            model,
            search_calib,
            method="infoq",
            bits=(2, 3, 4, 8),
            group_size=GROUP,
            skip_modules=SKIP,
            seed=args.seed,
            **common.PROBED_CALIBRATED,
        ),
    )
    candidates_s: dict[str, float] = {}  # wall time per kind of inputs
    computed: dict = {}  # candidates by prefix (None: float inputs); about 0.5 GB each

    def candidates_for(bits: float, refined: bool, role: str):
        """GPTQ's candidates for the ILP's costs (`role="costs"`) or the refinement's judge (`"judge"`): rounded
        on the inputs of the budget's uniform start or on the float model's, as `--candidate-inputs` says."""
        inputs = {"split": "prefix" if role == "costs" else "float"}.get(args.candidate_inputs, args.candidate_inputs)
        prefix = uniform_start(table, Budget(avg_bits=bits)) if inputs == "prefix" else None
        key = None if prefix is None else tuple(sorted(prefix.items()))
        cached = None if args.cache is None else Path(args.cache) / candidates_file(args.calib, prefix)
        if key not in computed and cached is not None and cached.exists():
            computed[key] = torch.load(cached, weights_only=False)
            print(f"candidates ({computed[key].meta['inputs']} inputs) read from {cached}", flush=True)
        if key not in computed:
            t = time.perf_counter()
            computed[key] = gptq_candidates(
                model,
                {n: table.bits for n in table.layers},
                calib,
                scheme=common.gptq_scheme(GROUP),
                prefix_bits=prefix,
            )
            inputs = computed[key].meta["inputs"]
            candidates_s[inputs] = time.perf_counter() - t
            print(
                f"candidates ({inputs} inputs): {candidates_s[inputs]:.0f} s, peak RSS {peak_rss_mib():.0f} MiB",
                flush=True,
            )
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                torch.save(computed[key], cached)
        return computed[key]

    held_out = args.judge_batches if args.held_out_batches is None else args.held_out_batches
    validation = calib[args.judge_batches : args.judge_batches + held_out] or None

    tables = {"rtn": table, "gptq": table}
    if args.rows == "baselines":
        for method in ("hawq", "weight_mse", "random"):
            tables[method] = cached_table(
                out / "tables" / f"smollm2_{method}_c{len(search_calib)}_s{args.seed}.json",
                False,
                lambda m=method: search(
                    model,
                    search_calib,
                    method=m,
                    bits=(2, 3, 4, 8),
                    group_size=GROUP,
                    skip_modules=SKIP,
                    seed=args.seed,
                ),
            )

    def policy(costs: str, judge: str, bits: float, seed: int):
        refined = judge != "none"
        kw = (
            {}
            if not refined
            else dict(
                passes=args.refine_passes,
                seed=seed,
                chains=args.refine_chains,
                gptq=candidates_for(bits, refined, "judge") if judge == "gptq" else None,
                validation=validation if judge == "gptq" else None,
            )
        )
        scored = (
            tables[costs] if costs == "rtn" else with_gptq_costs(tables[costs], candidates_for(bits, refined, "costs"))
        )
        ilp = allocate(scored, Budget(avg_bits=bits))
        return refine(ilp, model, calib[: args.judge_batches], **kw) if refined else ilp

    seeds = [args.seed] if args.refine_seeds is None else [int(x) for x in args.refine_seeds.split(",")]
    plan = []
    for bits in (float(b) for b in args.budgets.split(",")):
        if args.rows == "all" and bits == 3.0:
            plan.append(("RTN costs + RTN-judged refinement", "rtn", "rtn", bits, args.seed))
        if args.rows in ("all", "baselines"):
            plan.append(("GPTQ costs, ILP only", "gptq", "none", bits, args.seed))
        if args.rows == "baselines":
            plan += [
                (f"{m}, GPTQ costs, ILP only", m, "none", bits, args.seed) for m in ("hawq", "weight_mse", "random")
            ]
            continue
        for seed in seeds:
            label = (
                "GPTQ costs + GPTQ-judged refinement"
                + ("" if args.refine_seeds is None else f", seed {seed}")
                + ("" if args.refine_chains == 1 else f", {args.refine_chains} chains")
            )
            plan.append((label, "gptq", "gptq", bits, seed))
    rows = []
    policies = {}  # row -> the widths it packed
    for label, costs, judge, bits, seed in plan:
        t = time.perf_counter()
        pol = policy(costs, judge, bits, seed)
        alloc_s = time.perf_counter() - t
        m = copy.deepcopy(model)
        gptq_quantize_model(m, pol, calib, scheme={"group_size": GROUP}, skip_modules=SKIP, progress=False)
        r = pol.report.refinement
        rows.append(
            (
                bits,
                label,
                pol.report.avg_bits,
                common.perplexity(m, dev),
                common.perplexity(m, test),
                alloc_s,
                "-" if r is None else f"{r.kl_ilp:.3f} -> {r.kl_final:.3f} ({r.start}, {r.accepted} accepted)",
                "-"
                if not (r and r.kl_validation)
                else f"kept {r.kept}: " + ", ".join(f"{k} {v:.3f}" for k, v in r.kl_validation.items()),
            )
        )
        print(rows[-1], flush=True)
        del m
        policies[f"{bits} | {label}"] = {name: lb.w_bits for name, lb in pol.items()}
        write(out, args, candidates_s, rows, len(plan), policies)


def candidates_file(windows: int, prefix: dict | None) -> str:
    """The cache's file name for candidates on `windows` calibration windows, rounded on `prefix`'s inputs."""
    if prefix is None:
        return f"gptq_candidates_smollm2_c{windows}.pt"
    widths = set(prefix.values())
    tag = (
        str(widths.pop())
        if len(widths) == 1
        else hashlib.sha256(json.dumps(sorted(prefix.items())).encode()).hexdigest()[:12]
    )
    return f"gptq_candidates_smollm2_c{windows}_prefix{tag}.pt"


def write(out: Path, args, candidates_s: dict, rows: list, total: int, policies: dict) -> None:
    held_out = args.judge_batches if args.held_out_batches is None else args.held_out_batches
    md = [
        f"SmolLM2-135M weight-only, asymmetric, group {GROUP}, `lm_head` float; every row packed with sequential "
        f"GPTQ (damp {GPTQOptions().damp}, block 128) on {args.calib}x128 calibration tokens; InfoQ table of "
        "`benchmarks/gptq.py` "
        f"(4x128 search calibration), ILP, {args.refine_passes} refinement passes on the first "
        f"{4 * args.judge_batches}x128 calibration windows, held-out check on the next {4 * held_out}x128; perplexity "
        f"on {args.dev}x128 dev and {args.eval}x128 test tokens (test after dev); seed {args.seed}; "
        f"{common.machine()}. GPTQ candidates (every layer at 2/3/4/8 bits): "
        + "; ".join(f"{inputs} inputs {wall:.0f} s" for inputs, wall in candidates_s.items())
        + ".",
        "",
        "| avg bits budget | allocation | avg bits | dev ppl | test ppl "
        "| allocation wall s | refinement KL (calibration) "
        "| held-out check (KL) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    md += [
        f"| {b} | {label} | {avg:.3f} | {d:.2f} | {t:.2f} | {s:.0f} | {kl} | {v} |"
        for b, label, avg, d, t, s, kl, v in rows
    ]
    if len(rows) < total:
        md += ["", f"PARTIAL: {len(rows)} of {total} rows so far."]
    md += ["", f"Command: `{' '.join(['python -m benchmarks.gptq_aware', *sys.argv[1:]])}`"]
    suffix = "" if args.judge_batches == SEARCH_BATCHES and args.rows == "all" else f"_judge{4 * args.judge_batches}"
    if args.rows == "baselines":
        suffix = "_baselines"
    if args.refine_chains != 1:
        suffix += f"_chains{args.refine_chains}"
    if args.refine_passes != REFINE_PASSES:
        suffix += f"_passes{args.refine_passes}"
    if args.refine_seeds is not None:
        suffix += "_seeds" + args.refine_seeds.replace(",", "-")
    if held_out != args.judge_batches:
        suffix += f"_heldout{4 * held_out}"
    if args.candidate_inputs != "auto":
        suffix += f"_{args.candidate_inputs}_inputs"
    (out / f"gptq_aware_smollm2{suffix}.md").write_text("\n".join(md) + "\n")
    (out / "policies").mkdir(exist_ok=True)
    (out / "policies" / f"gptq_aware_smollm2{suffix}.json").write_text(json.dumps(policies, indent=1) + "\n")
    if len(rows) == total:
        print("\n".join(md))


if __name__ == "__main__":
    main()
