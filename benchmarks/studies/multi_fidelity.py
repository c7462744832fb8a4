"""Does a judge of more tokens make the refinement's moves carry to new text? EvoPress's multi-fidelity
selection (screen many moves on few tokens, confirm the best on many) against the product's check and
the plain refinement judged on 4 windows.

    python -m benchmarks.studies.multi_fidelity --jitters 2  # ~75 min, 2 CPU cores; results/multi_fidelity_smollm2.md

SmolLM2-135M, the product's default pipeline (32x128 calibration tokens, the InfoQ search on the first
4 windows, group 64, candidates {2,3,4,8}, GPTQ candidates on the uniform start's inputs, costs
rescaled by them, the ILP, leftovers bf16, packed from the candidates); only the stage after the ILP
changes:

- `check`: the product's default: the ILP's allocation or uniform, by KL on windows 0-8;
- `moves, judge 4`: `refine_passes=64, refine_chains=1`: random moves judged on windows 0-4, the
  held-out check on windows 4-8 (the previous default, one chain);
- `screened, judge 24`: `refine_passes=2 + --rounds, refine_chains=1, refine_judge_samples=24`: each
  round's 8 moves scored on windows 0-4, the best judged on windows 0-24; the held-out check on windows
  24-32.

Dev windows choose; test windows only report. Rows say the refinement's full passes, screenings and
wall time. `--jitters N` repeats everything on N copies of the weights with float32-sized noise
(`common.jitter_weights`, seeds 1..N: other GPTQ paths, as in `compare --jitters`) and adds the means.
"""

from __future__ import annotations

import argparse
import copy
import time
from dataclasses import replace
from pathlib import Path

from infoq_hf import InfoQConfig
from infoq_hf.pipeline import stages
from infoq_hf.pipeline.data import first_samples
from infoq_hf.pipeline.run import Run

from .. import common

BITS = (2, 3, 4, 8)
SKIP = ["lm_head"]


def product_config(calib, budget: float, seed: int, **refinement) -> InfoQConfig:
    """The main job's settings (SmolLM2 in `benchmarks.demo`), with `refinement`'s refine_* options."""
    return InfoQConfig(
        bits=list(BITS),
        budget={"avg_bits": budget},
        group_size=64,
        calibration=calib,
        search_samples=4,
        seed=seed,
        **refinement,
    )


def ilp_run(model, calib, budget: float, seed: int, candidates) -> tuple[Run, InfoQConfig]:
    """The default pipeline up to the ILP (the stages `quantize_with_infoq` runs before the check)."""
    config = product_config(calib, budget, seed)
    run = Run(model, SKIP, progress=False, candidates=candidates)
    for stage in (
        stages.check_budget,
        stages.calibrate,
        stages.choose_rounding,
        stages.round_candidates,
        stages.score,
        stages.count_leftovers,
        stages.gptq_costs,
        stages.allocate,
    ):
        run = stage(run, config)
    return run, config


def judged(run: Run, calib, budget: float, args) -> dict:
    """{row label: (the policy kept, seconds)} for each way of judging the ILP's allocation: the pipeline's
    refinement stage under each config."""
    ways = {
        "check": product_config(calib, budget, args.seed),
        "moves, judge 4": product_config(calib, budget, args.seed, refine_passes=args.plain_passes, refine_chains=1),
        "screened, judge 24": product_config(
            calib, budget, args.seed, refine_passes=2 + args.rounds, refine_chains=1, refine_judge_samples=24
        ),
    }
    out = {}
    for label, way in ways.items():
        started = time.perf_counter()
        refined = stages.refine(stages.calibrate(run, way), way).policy
        out[label] = (refined, time.perf_counter() - started)
        print(label, refined.report.refinement, flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", type=float, nargs="+", default=[3.0, 3.5])
    p.add_argument("--rounds", type=int, default=24, help="screened: rounds (one confirmation each)")
    p.add_argument("--plain-passes", type=int, default=64, help="moves, judge 4: whole-model passes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jitters", type=int, default=0, help="also N jittered copies of the weights (other GPTQ paths)")
    p.add_argument("--out", default="benchmarks/results/multi_fidelity_smollm2.md")
    args = p.parse_args()
    loaded, _, calib, dev, test = common.smollm2_data(32, 16, 32)
    assert first_samples(calib, 4) == calib[:1], "one batch holds the search's 4 windows"
    rows, results = [], {}  # results[(budget, label)] = [(dev, test) per path]
    for path in range(args.jitters + 1):
        model = loaded
        if path:
            model = copy.deepcopy(loaded)
            common.jitter_weights(model, path, SKIP)
        candidates = None
        for budget in args.budgets:
            run, config = ilp_run(model, calib, budget, args.seed, candidates)
            candidates = run.candidates  # the budgets here share the uniform start (3 bits): one GPTQ pass
            for label, (policy, seconds) in judged(run, calib, budget, args).items():
                r = policy.report.refinement
                packed = stages.pack(replace(run, model=copy.deepcopy(model), policy=policy), config).model
                ppl = common.perplexity(packed, dev), common.perplexity(packed, test)
                results.setdefault((budget, label), []).append(ppl)
                narrow = sum(policy[n].w_bits < 3 for n in policy)
                row = (
                    f"| {budget} | {label} | {path or 'as loaded'} | {r.kept} | {r.passes} | {r.screened} | "
                    f"{r.accepted} | {narrow} | {ppl[0]:.2f} | {ppl[1]:.2f} | {seconds:.0f} |"
                )
                rows.append(row)
                print(row, flush=True)
    means = []
    for (budget, label), runs in results.items():
        cells = [" / ".join(f"{v:.2f}" for v in split) + f" | {sum(split) / len(split):.2f}" for split in zip(*runs)]
        means.append(f"| {budget} | {label} | {cells[0]} | {cells[1]} |")
    text = "\n".join(
        [
            "# Multi-fidelity selection in the refinement: screened moves confirmed on 24 windows",
            "",
            f"`python -m benchmarks.studies.multi_fidelity --rounds {args.rounds} "
            f"--plain-passes {args.plain_passes} --seed {args.seed} --jitters {args.jitters}`; SmolLM2-135M, the "
            f"product's pipeline up to the ILP (see the module doc); {common.machine()}.",
            "",
            "Dev / test perplexity per path (the weights as loaded, then each jitter) and the mean:",
            "",
            "| budget | judged by | dev per path | dev mean | test per path | test mean |",
            "|---|---|---|---|---|---|",
            *means,
            "",
            "Every run:",
            "",
            "| budget | judged by | path (jitter seed) | kept | full passes | screened | moves accepted | "
            "layers at 2 bits | dev ppl | test ppl | wall s |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            *rows,
            "",
        ]
    )
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
