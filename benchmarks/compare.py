"""Equal-budget comparison: every method through the same pipeline, only the scores differ.

    python -m benchmarks.compare --model smollm2      # dev/test perplexity at 2.5 / 3.0 / 3.5 / 4.0 / 4.5 avg bits
    python -m benchmarks.compare --model tiny_llama   # the same on a random tiny Llama (a quick check, no assets)
    python -m benchmarks.compare --model mnist_cnn    # top-1 at 3.0 bits (10.67x) and at a W/A BitOps budget
    python -m benchmarks.compare --model fashion_resnet --checkpoint out/fashion_resnet8.pt   # the same

On a language model each method's table (InfoQ, InfoQ with the paper's Eq. 4 scores with `--with-eq4`,
hawq, weight_mse, size_only, llamacpp, random) goes through `quantize_with_infoq`, the library's one
pipeline, with the same `InfoQConfig`: the same calibration, rounding (`--rounding`, the product's
"auto" by default) and rounding-aware costs, the same whole-model refinement (`--refine-passes`, the
product's chains and held-out check) and the same packing under the same budget. `size_only` knows
nothing about a layer but its size and quantizer: its row is what the pipeline does alone. Each budget
also has the best uniform width under it, packed by the same pipeline. Sensitivity tables are cached
in benchmarks/results/tables/ (keyed by model, method, data sizes and seed) so other budgets need no
new probing; `--fresh` recomputes them. The search cost of each method (wall time, forward passes,
calibration samples) is reported from the table's own metadata, i.e. from the run that produced it.
"""

from __future__ import annotations

import argparse
import copy
import math
from pathlib import Path

import torch

from infoq_hf import BitPolicy, Budget, InfoQConfig, allocate, quantizable_layers, quantize_model, refine, search
from infoq_hf.defaults import DEFAULT_REFINE_PASSES
from infoq_hf.pipeline import quantize_with_infoq, stages
from infoq_hf.pipeline.data import first_samples, resolve_rounding
from infoq_hf.pipeline.stages import second_rounding
from infoq_hf.quant.quantizer import CLIP_MAX_BITS
from infoq_hf.quant.scheme import PackingScheme
from infoq_hf.sensitivity import SensitivityTable

from . import common
from .peers.policy_file import load_policy_file, windows_digest

METHODS = ["infoq", "hawq", "weight_mse", "size_only", "llamacpp", "random"]
LM_BUDGETS = (2.5, 3.0, 3.5, 4.0, 4.5)
CLASSIFIER_METHODS = ["infoq", "hawq", "weight_mse", "size_only", "random"]  # no llama.cpp roles in a CNN
RESAMPLES = 10000  # paired bootstrap resamples of the windows for each row's interval


def cached_table(path: Path, fresh: bool, compute) -> SensitivityTable:
    if path.exists() and not fresh:
        return SensitivityTable.load(path)
    table = compute()
    table.save(path)
    return table


def best_uniform_width(budget: float, bits) -> int:
    """The widest candidate width a uniform configuration can take under an average-bits budget."""
    fitting = [b for b in bits if b <= budget + 1e-9]
    if not fitting:
        raise ValueError(f"no candidate width in {sorted(bits)} fits {budget} average bits")
    return max(fitting)


def pipeline_estimate(model, bits, budget: float, skip=(), **config) -> str:
    """The information-change estimate the product's pipeline searches with at `budget` average bits
    (`stages.information_estimate`)."""
    from infoq_hf.sensitivity.infoq import InfoQOptions

    config = InfoQConfig(bits=list(bits), budget={"avg_bits": budget}, **config)
    return stages.information_estimate(model, config, skip).get("change_estimate", InfoQOptions().change_estimate)


def lm_tables(key: str, model, calib, args, out: Path, kw: dict) -> dict[str, dict[float, SensitivityTable]]:
    """{label: {budget: table}} of every method but InfoQ, whose search the pipeline runs itself (its
    per-width scores measure the GPTQ candidates of each budget's uniform start)."""
    searches = {m: {} for m in args.methods if m != "infoq"}
    if args.with_eq4:  # the paper's measurement: one probe per (layer, width), three times the calibrated search
        searches["infoq (paper Eq. 4)"] = {**common.PROBED_CALIBRATED, "scores": "eq4"}
    found = {}  # one search per method and options, shared by the budgets that ask for it
    jittered = "" if getattr(args, "jitter", None) is None else f"_jitter{args.jitter}"
    clipped = f"_clip{CLIP_MAX_BITS}" if kw.get("clip_search") else ""  # the rule's widths name the cache

    def table(method: str, opts: dict) -> SensitivityTable:
        name = method + "".join(f"_{k}{v}" for k, v in opts.items())
        if name not in found:
            found[name] = cached_table(
                out / "tables" / f"{key}{jittered}_{name}_c{len(calib)}_s{args.seed}{clipped}.json",
                args.fresh,
                lambda: search(model, calib, method=method, **kw, **opts),
            )
        return found[name]

    return {
        label: {budget: table(label.split()[0], opts) for budget in args.budgets} for label, opts in searches.items()
    }


def run_lm(key: str, name: str, model, calib, dev, test, args, out: Path):
    """Dev and test perplexity at every budget: the best uniform width under it and every method's table,
    each through `quantize_with_infoq` with the same configuration."""
    skip = ["lm_head"]
    bits = (2, 3, 4, 8)
    if args.jitter is not None:
        common.jitter_weights(model, args.jitter, skip)
        name = f"{name}, weights jittered with seed {args.jitter}"
    base = dict(
        bits=bits,
        group_size=64,
        calibration=calib,
        rounding=args.rounding,
        refine_passes=args.refine_passes,
        seed=args.seed,
        search_samples=args.search_samples,
        reround=args.reround,
    )
    config = InfoQConfig(**base, budget={"avg_bits": max(bits)})
    rounding = resolve_rounding(config, model, calib)
    # every method's table scores what the pipeline packs: its clipping too (`clip_search="auto"`)
    kw = dict(bits=bits, group_size=64, skip_modules=skip, seed=args.seed, clip_search=config.clip_search_for(rounding))
    # the tables are searched on what the pipeline searches on: the first `search_samples` samples
    searched = calib if args.search_samples is None else first_samples(calib, args.search_samples)
    tables = lm_tables(key, model, searched, args, out, kw)
    sizes = stages.layer_table(model, bits, scheme=PackingScheme(group_size=64), skip_modules=skip, embeddings=False)
    names = list(quantizable_layers(model, skip_modules=skip))
    # GPTQ's candidates: the same for every method at the budgets that share a uniform start
    candidates_scheme = common.gptq_scheme(64)
    starts = common.CandidatesByStart(model, {n: bits for n in names}, calib, candidates_scheme)

    def candidates_for(budget: float):
        return starts.for_budget(sizes, budget) if rounding == "gptq" else None

    def rounded_for(policy: BitPolicy, candidates):
        """What the pipeline's second rounding packs `policy` with (`stages.second_rounding`, on the
        check's samples): a peer's allocation gets the same as every method's. Also its note."""
        if candidates is None or not args.reround:
            return candidates, ""
        judged = calib if args.search_samples is None else first_samples(calib, 2 * args.search_samples)
        kept, kls, name = second_rounding(
            model, policy, candidates, calib, judged, table=sizes, scheme=candidates_scheme
        )
        return kept, "" if kls is None else f"; packed from {name} ({common.rounding_note(kls)})"

    def scored(m):
        """Every dev and test window's summed NLL (None for a split without windows)."""
        return (common.window_nll(m, dev) if dev else None), common.window_nll(m, test)

    def packed(config, table=None, candidates=None):
        m = copy.deepcopy(model)
        result = quantize_with_infoq(m, config, table=table, candidates=candidates, skip_modules=skip, progress=False)
        return result, *scored(m)

    rows = [("fp32", "-", 32.0, *scored(model), "", "")]
    refinements = []
    pipeline_tables = {}  # the tables the pipeline searched, for the cost table
    peers = [load_policy_file(spec, key) for spec in args.policy_file]
    for peer in peers:
        peer.check_layers(names, bits)
        if not any(abs(peer.budget - b) < 1e-9 for b in args.budgets):
            raise SystemExit(f"{peer.path} is for {peer.budget} average bits: add it to --budgets")
    for budget in args.budgets:
        width = best_uniform_width(budget, bits)
        uniform = BitPolicy({n: {"w_bits": width, "a_bits": None} for n in names})
        result, nll_dev, nll_test = packed(InfoQConfig(**base, policy=uniform))
        rows.append(
            (
                f"uniform {width}-bit",
                budget,
                result.summary["avg_bits"],
                nll_dev,
                nll_test,
                "",
                result.summary["rounding"],
            )
        )
        print(*map(shown, rows[-1]), flush=True)
        searched_here = {"infoq": None} if "infoq" in args.methods else {}  # the pipeline searches
        for label, table in [*searched_here.items(), *((k, v[budget]) for k, v in tables.items())]:
            config = InfoQConfig(**base, budget={"avg_bits": budget}, method=label.split()[0])
            result, nll_dev, nll_test = packed(config, table, candidates_for(budget))
            if table is None:
                pipeline_tables[f"{label} @ {budget}"] = result.table
            r = result.policy.report.refinement
            note = common.check_note(result)
            rows.append(
                (label, budget, result.summary["avg_bits"], nll_dev, nll_test, note, result.summary["rounding"])
            )
            if r is not None:
                refinements.append((budget, label, r))
            print(*map(shown, rows[-1]), flush=True)
        for peer in [q for q in peers if abs(q.budget - budget) < 1e-9]:
            added = peer_rows(peer, packed, base, names, dev, test, candidates_for(budget), rounded_for)
            rows += added
            print(*(" ".join(map(shown, r)) for r in added), sep="\n", flush=True)
    reround = "; reround=True: a kept mix rounded again on its own inputs, packed if its KL is lower"
    header = (
        f"{name}; weight-only, group 64, candidates {{2,3,4,8}}, `lm_head` and the other leftovers in bf16; "
        "every row through "
        f"`quantize_with_infoq` (rounding {args.rounding}; the ILP's allocation kept or replaced by uniform by KL "
        f"to fp32 on the calibration tokens, {args.refine_passes} refinement moves{reround if args.reround else ''}); "
        f"seed {args.seed}; "
        f"{common.machine()}. x uniform: perplexity / that of the budget's uniform row, with its 90% paired "
        f"bootstrap interval over the windows ({RESAMPLES} resamples)"
    )
    table_md = [
        "| allocation | budget (avg bits) | achieved avg bits | dev perplexity | test perplexity | dev x uniform | "
        "test x uniform | whole-model check (calibration KL) | rounding |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    uniform_rows = {b: (d, e) for a, b, c, d, e, f, g in rows if a.startswith("uniform ")}

    def versus(nll, ref) -> str:
        if not isinstance(nll, tuple) or ref is None or nll is ref:
            return "-"
        return common.ratio_interval(nll[0], ref[0], nll[1], RESAMPLES)

    for a, b, c, d, e, f, g in rows:
        ref_dev, ref_test = uniform_rows.get(b, (None, None))
        cells = [a, b, f"{c:.3f}", shown(d), shown(e), versus(d, ref_dev), versus(e, ref_test), f, g]
        table_md.append("| " + " | ".join(map(str, cells)) + " |")
    table_md += [
        "",
        "Refinement cost (whole-model passes on the calibration tokens):",
        "",
        "| budget | method | passes | accepted | start | wall s |",
        "|---|---|---|---|---|---|",
    ]
    table_md += [f"| {b} | {m} | {r.passes} | {r.accepted} | {r.start} | {r.wall_s:.0f} |" for b, m, r in refinements]
    return (
        header,
        table_md,
        {**pipeline_tables, **{f"{label} @ {b}": t for label, by in tables.items() for b, t in by.items()}},
        rows,
    )


def shown(value) -> str:
    """A row's entry as the table shows it: the perplexity of (window NLLs, tokens per window)."""
    if isinstance(value, tuple):
        return f"{common.perplexity_from_nll(*value):.2f}"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def peer_rows(peer, packed, base: dict, names, dev, test, candidates, rounded_for) -> list[tuple]:
    """A peer's allocation packed by our pipeline as given (no whole-model check: the choice is the
    peer's) with the same GPTQ rounding as every method's (the candidates, or the second rounding where
    the pipeline would take it: `rounded_for`), and the peer's own end-to-end result where its file has
    one on the same windows."""
    policy = BitPolicy({n: {"w_bits": peer.layers[n], "a_bits": None} for n in names})
    candidates, rounding_note = rounded_for(policy, candidates)
    result, nll_dev, nll_test = packed(InfoQConfig(**base, policy=policy), candidates=candidates)
    wall = peer.record.get("autoscheme_wall_s")
    note = (
        f"peer's allocation as given ({wall:.0f} s in its venv)" if wall is not None else "peer's allocation as given"
    ) + rounding_note
    rows = [(peer.label, peer.budget, result.summary["avg_bits"], nll_dev, nll_test, note, result.summary["rounding"])]
    own = peer.record.get("own")
    if own:
        same = peer.record.get("eval_windows", {}).get("sha256") == windows_digest(dev + test)
        rows.append(
            (
                f"{peer.label} (its own rounding)",
                peer.budget,
                peer.record.get("avg_bits", float("nan")),
                own["dev_ppl"] if same and own.get("dev_ppl") is not None else float("nan"),
                own["test_ppl"] if same else float("nan"),
                "measured in the peer's venv on these windows" if same else "measured on other windows: not shown",
                own.get("rounding", ""),
            )
        )
    return rows


def run_smollm2(args, out: Path):
    if args.search_samples is None:
        args.search_samples = 4  # as the main job (benchmarks/demo.py): search and judge on the first 4 windows
    model, _, calib, dev, test = common.smollm2_data(args.calib or 32, args.dev, args.eval or 32)
    name = (
        f"SmolLM2-135M, calibration {len(calib) * 4}x128 tokens (comedies/histories; search and refinement "
        f"on the first {args.search_samples} windows), perplexity on "
        f"{args.dev}x128 dev and {args.eval or 32}x128 test tokens (tragedies)"
    )
    return run_lm("smollm2", name, model, calib, dev, test, args, out)


def run_tiny_llama(args, out: Path):
    """A random 8-block Llama and random tokens: checks that every row runs, in about a minute; the numbers
    mean nothing."""
    model = common.tiny_random_llama(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    def batches(n):
        return [
            {
                "input_ids": (ids := torch.randint(0, 256, (4, 32), generator=gen)),
                "attention_mask": torch.ones_like(ids),
            }
            for _ in range(n)
        ]

    calib, dev, test = batches(args.calib or 2), batches(1), batches(1)
    return run_lm(
        "tiny_llama", "a random tiny Llama (8 blocks, width 64) on random tokens", model, calib, dev, test, args, out
    )


def run_mnist(args, out: Path):
    model, calib, _, test = common.mnist_data(args.calib or 512, 0, args.eval or 10000)
    name = (
        f"MNIST CNN (ccexam, 4 layers), calibration {args.calib or 512} train images, "
        f"top-1 on {args.eval or 10000} test images"
    )
    return run_classifier("mnist_cnn", name, model, calib, test, args, out)


def run_fashion_resnet(args, out: Path):
    ckpt = Path(args.checkpoint)
    if not ckpt.exists():
        raise SystemExit(
            f"skipped: no Fashion-MNIST ResNet checkpoint at {ckpt}; train one with "
            f"`python recipes/qat/train_fashion_mnist.py --epochs 3 --train-samples 20000 --out {ckpt}`"
        )
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from recipes.common import fashion_mnist, tuple_batches
    from recipes.qat.resnet import load_checkpoint

    model, _ = load_checkpoint(ckpt)
    xtr, ytr, xte, yte = fashion_mnist(subsample_train=args.calib or 512, subsample_test=args.eval, seed=args.seed)
    calib, test = tuple_batches(xtr, ytr, 64), tuple_batches(xte, yte, 500)
    name = (
        f"Fashion-MNIST ResNet-8 ({ckpt.name}, trained by recipes/qat), calibration {len(ytr)} train images, "
        f"top-1 on {len(yte)} test images"
    )
    return run_classifier("fashion_resnet", name, model.eval(), calib, test, args, out)


def run_classifier(key, name, model, calib, test, args, out: Path):
    """Top-1 at 3.0 average bits (10.67x) and at the BitOps of uniform W4A4 (activations quantized).

    Weight-only rows go through `quantize_with_infoq` with one configuration for every method (the
    product's default, which keeps the ILP's allocation or uniform by KL on the calibration images, and
    the same with `passes` refinement moves); the W/A rows, which the pipeline does not allocate, through
    `allocate` and `refine` with the same moves for every method."""
    kw = dict(bits=(2, 3, 4, 8), seed=args.seed, score_activations=True)
    tables = {}
    # InfoQ's weights as the pipeline searches them at 3.0 bits (its activations are probed)
    estimate = pipeline_estimate(model, kw["bits"], 3.0, group_size=None, pin_first_last=False)
    for m in CLASSIFIER_METHODS:
        opts = {"score_activations": False} if m != "infoq" else {"change_estimate": estimate}
        suffix = f"_{estimate}" if m == "infoq" else ""
        tables[m] = cached_table(
            out / "tables" / f"{key}_{m}{suffix}_c{len(calib)}_s{args.seed}.json",
            args.fresh,
            lambda m=m, opts=opts: search(model, calib, method=m, **{**kw, **opts}),
        )
    x0 = calib[0][0][:1]
    rows = [("fp32", "-", 32.0, "-", common.top1(model, test), "")]
    names = list(quantizable_layers(model))
    passes = args.refine_passes or 64  # the CNN rows compare the pipeline's default with and without moves
    base = dict(bits=(2, 3, 4, 8), group_size=None, calibration=calib, seed=args.seed, pin_first_last=False)

    def packed(config, table=None):
        m = copy.deepcopy(model)
        result = quantize_with_infoq(m, config, table=table, progress=False)
        return result, common.top1(m, test)

    result, top1 = packed(InfoQConfig(**{**base, "bits": 3}))
    rows.append(("uniform 3-bit", "3.0 avg bits (10.67x)", result.summary["avg_bits"], "-", top1, ""))
    for method, table in tables.items():
        for suffix, moves in [("", 0), (f" + {passes} moves", passes)]:
            config = InfoQConfig(**base, budget={"avg_bits": 3.0}, method=method, refine_passes=moves)
            result, top1 = packed(config, table)
            row = (
                method + suffix,
                "3.0 avg bits (10.67x)",
                result.summary["avg_bits"],
                "-",
                top1,
                common.check_note(result),
            )
            rows.append(row)
            print(rows[-1], flush=True)
    refined = dict(passes=passes, seed=args.seed, progress=False)
    # W/A: BitOps budget = that of uniform W4A4, activations chosen from {4, 8} where scored.
    from infoq_hf import bitops, calibrate_activation_ranges

    w4a4 = BitPolicy({n: {"w_bits": 4, "a_bits": 4} for n in names})
    budget_ops = bitops(model, w4a4, x0)
    m = copy.deepcopy(model)
    quantize_model(m, w4a4, act_ranges=calibrate_activation_ranges(m, [b[0] for b in calib], w4a4))
    rows.append(("uniform W4A4", f"BitOps {budget_ops / 1e6:.1f}M", 4.0, 4, common.top1(m, test), ""))
    for method, table in tables.items():
        wa = {"act_bits": [4, 8]} if table.has_activation_scores else {"fixed_a_bits": 4}
        label = method + (" (W/A scores)" if table.has_activation_scores else " (weights only, A4)")
        for suffix, extra in [("", None), (f" + {passes} moves", refined)]:
            policy = allocate(table, Budget(bitops=budget_ops), pin_first_last=False, **wa)
            policy = refine(policy, model, calib, **extra) if extra else policy
            m = copy.deepcopy(model)
            ranges = calibrate_activation_ranges(m, [b[0] for b in calib], policy)
            quantize_model(m, policy, act_ranges=ranges)
            a_mean = sum(lb.a_bits for lb in policy.values()) / len(policy)
            rows.append(
                (
                    label + suffix,
                    f"BitOps {budget_ops / 1e6:.1f}M",
                    policy.report.avg_bits,
                    round(a_mean, 2),
                    common.top1(m, test),
                    "",
                )
            )
    header = (
        f"{name}; candidates {{2,3,4,8}}, first/last not pinned, rounding to nearest; weight-only rows through "
        f"`quantize_with_infoq` (the ILP's allocation kept or replaced by uniform by KL to fp32 on the calibration "
        f"images), with 0 and {passes} refinement moves for every method; seed {args.seed}; {common.machine()}"
    )
    table_md = [
        "| allocation | budget | avg weight bits | mean act bits | top-1 % | whole-model check (calibration KL) |",
        "|---|---|---|---|---|---|",
    ]
    table_md += [f"| {a} | {b} | {c:.3f} | {d} | {e:.2f} | {f} |" for a, b, c, d, e, f in rows]
    return header, table_md, tables, rows


def cost_table(tables: dict) -> list[str]:
    lines = ["| method | search wall s | forward passes | layer evals | calibration batches |", "|---|---|---|---|---|"]
    for method, t in tables.items():
        c = t.meta["cost"]
        batches = (t.meta.get("calibration") or {}).get("batches", 0)
        lines.append(f"| {method} | {c['wall_s']:.1f} | {c['forward_passes']} | {c['layer_evals']} | {batches} |")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["smollm2", "tiny_llama", "mnist_cnn", "fashion_resnet"], required=True)
    p.add_argument("--checkpoint", default="out/fashion_resnet8.pt", help="fashion_resnet: the fp32 checkpoint")
    p.add_argument("--calib", type=int, default=None)
    p.add_argument("--eval", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true", help="recompute cached sensitivity tables")
    p.add_argument(
        "--refine-passes",
        type=int,
        default=DEFAULT_REFINE_PASSES,
        help=f"refinement moves (default the product's, {DEFAULT_REFINE_PASSES})",
    )
    p.add_argument("--with-eq4", action="store_true", help="LLMs: also InfoQ with the paper's Eq. 4 scores")
    p.add_argument(
        "--dev",
        type=int,
        default=common.DEV_WINDOWS,
        help=f"smollm2: dev windows of 128 tokens (at most {common.DEV_WINDOWS})",
    )
    p.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS, help="LLMs: the methods compared")
    p.add_argument("--budgets", type=float, nargs="+", default=list(LM_BUDGETS), help="LLMs: average-bits budgets")
    p.add_argument(
        "--rounding",
        default="auto",
        choices=["auto", "rtn", "gptq"],
        help="LLMs: the pipeline's rounding (default the product's 'auto')",
    )
    p.add_argument(
        "--search-samples",
        type=int,
        default=None,
        help="LLMs: InfoQConfig.search_samples (the search's and refinement's share; the next as many are the "
        "held-out check); smollm2 default 4 as the main job, else all",
    )
    p.add_argument(
        "--policy-file",
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="LLMs: a peer's per-layer widths (JSON from benchmarks/peers/, e.g. autoscheme_policy.py) packed by "
        "our pipeline as a row NAME at its budget; repeat for several",
    )
    p.add_argument(
        "--reround",
        action="store_true",
        help="LLMs: InfoQConfig(reround=True) for every method, and the same second rounding for a peer's "
        "allocation; writes compare_MODEL_reround.md",
    )
    p.add_argument(
        "--jitters",
        type=int,
        default=0,
        help="LLMs: also run N copies whose weights carry float32-sized noise (`common.jitter_weights`, seeds "
        "1..N), as another CPU's arithmetic would; GPTQ may take another path in each; adds the mean over the "
        "runs and writes compare_MODEL_jitterN.md",
    )
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    if args.jitters and args.model not in ("smollm2", "tiny_llama"):
        p.error("--jitters is for the language models (smollm2, tiny_llama)")
    if args.policy_file and args.model not in ("smollm2", "tiny_llama"):
        p.error("--policy-file is for the language models (smollm2, tiny_llama)")
    out = Path(args.out)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    runner = {
        "smollm2": run_smollm2,
        "tiny_llama": run_tiny_llama,
        "mnist_cnn": run_mnist,
        "fashion_resnet": run_fashion_resnet,
    }[args.model]
    args.jitter = None
    header, table_md, tables, rows = runner(args, out)
    text = "\n".join(
        [header, "", *table_md, "", "Search cost (from the run that produced each table):", "", *cost_table(tables)]
    )
    suffix = "_reround" if args.reround else ""
    if args.jitters:
        runs = [rows]
        for seed in range(1, args.jitters + 1):
            args.jitter = seed
            runs.append(runner(args, out)[3])
        text = "\n".join([*jitter_summary(runs), "", "## The run on the weights as loaded", "", text])
        suffix += f"_jitter{args.jitters}"
    print(text)
    (out / f"compare_{args.model}{suffix}.md").write_text(text + "\n")


def jitter_summary(runs: list[list[tuple]]) -> list[str]:
    """Each row's dev and test perplexity in every run (the weights as loaded, then each jitter seed), and
    their means: how far a row's place in the table is GPTQ's path rather than its allocation."""
    lines = [
        f"## Mean over {len(runs)} runs: the weights as loaded and {len(runs) - 1} float32-sized jitters",
        "",
        "| allocation | budget (avg bits) | dev perplexity per run | dev mean | test perplexity per run | test mean |",
        "|---|---|---|---|---|---|",
    ]
    for i, row in enumerate(runs[0]):
        per_run = [run[i] for run in runs]
        if any(r[:2] != row[:2] for r in per_run):
            raise RuntimeError(f"the runs' rows differ at {row[:2]}: {[r[:2] for r in per_run]}")
        cells = [row[0], row[1]]
        for split in (3, 4):
            values = [common.perplexity_from_nll(*r[split]) for r in per_run if isinstance(r[split], tuple)]
            if not values:
                cells += ["-", "-"]
                continue
            cells += [" / ".join(f"{v:.2f}" for v in values), f"{sum(values) / len(values):.2f}"]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return lines


if __name__ == "__main__":
    main()
