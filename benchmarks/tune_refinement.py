"""Choose how the refinement's result is picked, and the InfoQ cost form under GPTQ, on DEV windows only.

    python -m benchmarks.tune_refinement --budgets 3.0 --seeds 0,1,2     # ~25 min on 2 CPU cores

Same model, data, table and GPTQ candidates as `benchmarks.gptq_aware` (the candidates are cached in
`--cache`, 0.5 GB, so a second run starts in a minute). For each budget:
- refinement ends: one chain per seed (judged on the first 4 calibration windows, like the pipeline),
  and the two starts (ILP, uniform);
- ILP-only allocations from costs alpha_l^gamma * t2(l, b) (gamma 1 = InfoQ's calibrated costs,
  gamma 0 = the relative GPTQ error alone);
each scored by KL to the float model on held-out calibration windows of several sizes (4, 12, 28
windows after the judge's) and by dev perplexity, twice: with the candidates' GPTQ weights (float-input
Hessians, what the refinement judges), and (`--packed`) packed as the product packs, sequential GPTQ
on all 32 calibration windows. The questions it answers: which held-out size, and which weights,
pick among the chains the one dev text prefers. Test windows are never loaded.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

from infoq_hf import BitPolicy, Budget, allocate, refine, search
from infoq_hf.allocation.judge import KLJudge
from infoq_hf.quant.apply import default_forward
from infoq_hf.quant.gptq import gptq_candidates, gptq_quantize_model
from infoq_hf.quant.scheme import PackingScheme
from infoq_hf.sensitivity import SensitivityTable
from infoq_hf.sensitivity.rounding_costs import with_gptq_costs
from infoq_hf.sensitivity.task import output_tensor

from . import common
from .compare import cached_table
from .gptq import GROUP, SEARCH_BATCHES, SKIP

HELD_OUT_WINDOWS = (4, 12, 28)  # after the judge's 4; batches of 4 windows


def cached_candidates(path: Path, model, table, calib, prefix: int | None):
    if path.exists():
        return torch.load(path, weights_only=False)
    candidates = gptq_candidates(
        model,
        {n: table.bits for n in table.layers},
        calib,
        scheme=PackingScheme(group_size=GROUP, rounding="gptq"),
        prefix_bits=None if prefix is None else {n: prefix for n in table.layers},
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(candidates, path)
    return candidates


def gamma_table(table: SensitivityTable, gamma: float) -> SensitivityTable:
    out = SensitivityTable.from_dict(table.to_dict())
    for info in out.layers.values():
        info["w"] = {b: info["alpha"] ** gamma * info["t2"][b] for b in out.bits}
    return out


@torch.no_grad()
def dev_perplexity(model, candidates, widths: dict[str, int], dev) -> float:
    layers = {n: model.get_submodule(n) for n in widths}
    saved = {n: m.weight.data.clone() for n, m in layers.items()}
    try:
        for n, b in widths.items():
            layers[n].weight.data.copy_(candidates.weight(n, b))
        return common.perplexity(model, dev)
    finally:
        for n, m in layers.items():
            m.weight.data.copy_(saved[n])


@torch.no_grad()
def packed_scores(model, widths: dict[str, int], calib, held_out: list, reference: list, dev) -> tuple[list, float]:
    """Held-out KLs (over the first 4, 12, 28 windows of `held_out`, whose float log-probs are `reference`)
    and dev perplexity of the model packed with sequential GPTQ as the product packs it."""
    packed = copy.deepcopy(model)
    policy = BitPolicy({n: {"w_bits": b, "a_bits": None} for n, b in widths.items()})
    gptq_quantize_model(packed, policy, calib, scheme={"group_size": GROUP}, skip_modules=SKIP, progress=False)
    totals, counts = [], []  # running sums over the held-out batches
    for batch, ref in zip(held_out, reference):
        q = torch.log_softmax(output_tensor(default_forward(packed, batch)).float(), -1)
        per = (ref.exp() * (ref - q)).sum(-1)
        keep = batch["attention_mask"].bool()
        totals.append((totals[-1] if totals else 0.0) + float(per[keep].sum()))
        counts.append((counts[-1] if counts else 0) + int(keep.sum()))
    return [totals[w // 4 - 1] / counts[w // 4 - 1] for w in HELD_OUT_WINDOWS], common.perplexity(packed, dev)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", default="3.0")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--gammas", default="0,0.25,0.5,1")
    p.add_argument("--refine-passes", type=int, default=64)
    p.add_argument("--packed", action="store_true", help="also score every configuration packed with sequential GPTQ")
    p.add_argument(
        "--prefix-bits",
        type=int,
        default=None,
        help="candidates rounded on the inputs of a prefix at this uniform width (default: float inputs)",
    )
    p.add_argument("--cache", default="out/gptq_candidates_smollm2_c32.pt")
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    out = Path(args.out)
    torch.manual_seed(0)
    model, _, calib, dev, _ = common.smollm2_data(32, 16, 0)
    table = cached_table(
        out / "tables" / f"smollm2_infoq_calibrated_c{SEARCH_BATCHES}_s0.json",
        False,
        lambda: search(
            model,
            calib[:SEARCH_BATCHES],
            method="infoq",
            bits=(2, 3, 4, 8),
            group_size=GROUP,
            skip_modules=SKIP,
            seed=0,
        ),
    )
    cache = Path(args.cache if args.prefix_bits is None else args.cache.replace(".pt", f"_prefix{args.prefix_bits}.pt"))
    candidates = cached_candidates(cache, model, table, calib, args.prefix_bits)
    gptq_table = with_gptq_costs(table, candidates)
    judge = calib[:SEARCH_BATCHES]
    held_out = {w: calib[SEARCH_BATCHES : SEARCH_BATCHES + w // 4] for w in HELD_OUT_WINDOWS}
    a_of = {n: None for n in table.layers}
    longest = held_out[max(HELD_OUT_WINDOWS)]
    reference = None  # the float model's log-probs on the held-out windows, for the packed scores (~0.7 GB)
    if args.packed:
        with torch.no_grad():
            reference = [torch.log_softmax(output_tensor(default_forward(model, b)).float(), -1) for b in longest]

    rows = []
    for bits in (float(b) for b in args.budgets.split(",")):
        configs = {}
        for gamma in (float(g) for g in args.gammas.split(",")):
            pol = allocate(gamma_table(gptq_table, gamma), Budget(avg_bits=bits))
            configs[f"ILP, alpha^{gamma:g} x t2"] = pol
        for seed in (int(s) for s in args.seeds.split(",")):
            pol = refine(
                allocate(gptq_table, Budget(avg_bits=bits)),
                model,
                judge,
                passes=args.refine_passes,
                seed=seed,
                gptq=candidates,
                progress=False,
            )
            r = pol.report.refinement
            configs[f"refined, seed {seed} (from {r.start}, judge KL {r.kl_final:.3f})"] = pol
        uniform = {n: int(bits) for n in table.layers}
        scored = []
        for label, pol in configs.items():
            widths = {n: pol[n].w_bits for n in table.layers}
            scored.append((label, widths))
        if bits == int(bits):
            scored.append((f"uniform {int(bits)}", uniform))
        for label, widths in scored:
            kls = []
            for w in HELD_OUT_WINDOWS:
                ev = KLJudge(model, gptq_table, held_out[w], default_forward, a_of, candidates.weight)
                try:
                    kls.append(ev.evaluate(widths)[0])
                finally:
                    ev.restore()
            packed = packed_scores(model, widths, calib, longest, reference, dev) if args.packed else None
            rows.append((bits, label, kls, dev_perplexity(model, candidates, widths, dev), packed))
            print(rows[-1], flush=True)
            write(out, args, rows)


def write(out: Path, args, rows) -> None:
    inputs = "float-input" if args.prefix_bits is None else f"{args.prefix_bits}-bit-prefix-input"
    md = [
        (
            f"Refinement ends and ILP cost forms, SmolLM2-135M, GPTQ candidates (32x128 calibration, {inputs} "
            f"Hessians, group {GROUP}); refinement judged on calibration windows 0-3, {args.refine_passes} passes, one "
            f"chain per seed; KL to fp32 on held-out calibration windows 4..(4+n); perplexity on 16x128 DEV windows "
            f"with the candidates' weights; test windows never loaded; {common.machine()}."
        ),
        "",
        "| avg bits | configuration | "
        + " | ".join(f"held-out KL, {w} windows" for w in HELD_OUT_WINDOWS)
        + " | dev ppl |",
        "|---|---|" + "---|" * (len(HELD_OUT_WINDOWS) + 1),
    ]
    md += [
        f"| {b} | {label} | " + " | ".join(f"{k:.4f}" for k in kls) + f" | {ppl:.2f} |"
        for b, label, kls, ppl, _ in rows
    ]
    if any(packed for *_, packed in rows):
        md += [
            "",
            "Packed with sequential GPTQ on the 32 calibration windows (as the product packs):",
            "",
            "| avg bits | configuration | "
            + " | ".join(f"held-out KL, {w} windows" for w in HELD_OUT_WINDOWS)
            + " | dev ppl |",
            "|---|---|" + "---|" * (len(HELD_OUT_WINDOWS) + 1),
        ]
        md += [
            f"| {b} | {label} | " + " | ".join(f"{k:.4f}" for k in packed[0]) + f" | {packed[1]:.2f} |"
            for b, label, _, _, packed in rows
            if packed
        ]
    md += ["", f"Command: `{' '.join(['python -m benchmarks.tune_refinement', *sys.argv[1:]])}`"]
    suffix = ("" if args.prefix_bits is None else f"_prefix{args.prefix_bits}") + ("_packed" if args.packed else "")
    (out / f"tune_refinement_smollm2_b{args.budgets.replace(',', '-')}{suffix}.md").write_text("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
