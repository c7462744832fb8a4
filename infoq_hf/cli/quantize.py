"""`infoq quantize`: search, allocate and pack a model into a checkpoint folder (optionally from a saved
table or policy), save it whole, and push it."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..calibration import calibration_record
from ..checkpoint_info import SUMMARY_FILE, TABLE_FILE
from ..config import DEFAULT_SCHEME, InfoQConfig
from ..defaults import DEFAULT_REFINE_CHAINS, DEFAULT_REFINE_PASSES
from ..hub import push_to_hub
from ..integrations.transformers import quantize_pretrained
from ..pipeline import format_summary, quantize_with_infoq
from ..saving import save
from ..sensitivity import DATA_FREE_METHODS
from .arguments import (
    add_budget,
    add_model_and_calibration,
    budget_from_args,
    calibration_spec,
    clip_search_setting,
    nonnegative_int,
    packing_scheme,
    positive,
)
from .common import EXIT_OK, UsageError, say
from .inputs import LoadedModel, read_policy, read_table

NAME = "quantize"
HELP = "search + allocate + pack a model into a checkpoint folder"
DESCRIPTION = (
    "Score sensitivities, allocate bits under the budget, pack the weights and save "
    "the checkpoint (with the sensitivity table and a summary) into --out."
)
EXAMPLES = """\
  # search, allocate and pack a causal LM at 3 bits on average, calibrated on a local text file
  infoq quantize ./llama-1b --bits 2,3,4,8 --avg-bits 3 --calib wiki.txt --samples 64 --seq-len 512 \\
      --out ./llama-1b-infoq

  # a timm model under a size budget, images from a folder (class subfolders), then publish
  infoq quantize timm:resnet18.a1_in1k --size-mb 4 --calib ./imagenet-val-sample --samples 256 \\
      --out ./resnet18-infoq --push me/resnet18-infoq"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `infoq quantize`."""
    add_model_and_calibration(parser, calib_required=False)
    add_budget(parser)
    parser.add_argument(
        "--solver", default="auto", choices=["auto", "gurobi", "highs"], help="ILP solver (default auto)"
    )
    parser.add_argument(
        "--refine-passes",
        type=nonnegative_int,
        default=DEFAULT_REFINE_PASSES,
        metavar="N",
        help="random moves refining the ILP's allocation by KL to the float model on the calibration "
        f"data (default {DEFAULT_REFINE_PASSES}: none; the allocation is still compared with uniform)",
    )
    parser.add_argument(
        "--refine-chains",
        type=positive(int),
        default=DEFAULT_REFINE_CHAINS,
        metavar="N",
        help="independent refinements from the same start; the best on held-out calibration data is "
        f"kept (default {DEFAULT_REFINE_CHAINS})",
    )
    parser.add_argument(
        "--refine-judge-samples",
        type=positive(int),
        default=None,
        metavar="N",
        help="judge the refinement's moves on the first N calibration samples, each round's moves screened "
        "on the search samples first (multi-fidelity; default: the search samples, no screening)",
    )
    parser.add_argument(
        "--reround",
        action="store_true",
        help="GPTQ rounding: also round a kept mix by a sequential GPTQ pass on its own inputs and pack the "
        "rounding closer to the float model (one GPTQ pass more; helps far below a candidate width)",
    )
    parser.add_argument(
        "--search-samples",
        type=positive(int),
        default=None,
        metavar="N",
        help="calibration samples (the first N) the search and the refinement use; GPTQ rounds with "
        "all --samples (default: all)",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="checkpoint folder to write")
    parser.add_argument(
        "--table",
        metavar="SCORES.json",
        help="allocate from this sensitivity table (infoq search) instead of searching again",
    )
    parser.add_argument(
        "--policy", metavar="POLICY.json", help="pack with this policy (infoq allocate) as it is: no search, no budget"
    )
    parser.add_argument("--push", metavar="REPO", help="also push the result to this Hub repo (user/name)")
    parser.add_argument("--private", action="store_true", help="with --push: create the repo private")
    parser.add_argument("--overwrite", action="store_true", help="with --push: replace an existing repo's files")


def _given_table_and_policy(args):
    """`infoq quantize --table` (allocate without a new search) or `--policy` (apply as it is)."""
    budget_given = any(v is not None for v in (args.avg_bits, args.size_mb, args.bitops, args.compression))
    if args.policy is not None:
        if args.table is not None or budget_given:
            raise UsageError(
                "--policy applies a given policy as it is; drop --table and the budget "
                "(or pass --table with a budget to allocate a new policy)"
            )
        return None, read_policy(args.policy, "--policy")
    return (read_table(args.table, "--table") if args.table is not None else None), None


def cmd_quantize(args) -> int:
    """Load the model, quantize it under the budget (or a given table / policy), save the folder whole."""
    spec = calibration_spec(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder; pass a folder path")
    table, policy = _given_table_and_policy(args)
    budget = None if policy is not None else budget_from_args(args)
    started = time.perf_counter()
    say(f"loading {args.model}")
    loaded = LoadedModel(args.model)
    if policy is None and table is None and spec is None and args.method not in DATA_FREE_METHODS:
        raise UsageError(
            f"--method {args.method} needs calibration data: pass --calib SPEC (or use --method weight_mse)"
        )
    packing = packing_scheme(args, table.scheme if table is not None else DEFAULT_SCHEME)
    config = InfoQConfig(
        bits=args.bits,
        budget=budget,
        method=args.method,
        calibration=spec,
        **{k: getattr(packing, k) for k in ("group_size", "conv_group_size", "symmetric")},
        solver=args.solver,
        seed=args.seed,
        policy=policy,
        refine_passes=args.refine_passes,
        refine_chains=args.refine_chains,
        refine_judge_samples=args.refine_judge_samples,
        reround=args.reround,
        search_samples=args.search_samples,
        rounding=args.rounding,
        clip_search=clip_search_setting(args),
        quantize_embeddings=args.quantize_embeddings,
        gptq_options={"damp": args.gptq_damp, "act_order": args.gptq_act_order},
    )
    if policy is not None:
        say(f"applying the policy of {args.policy} ({len(policy)} entries; no search)")
    elif table is not None:
        say(f"allocating on the table of {args.table} (no search)")
    else:
        say(f"scoring {args.method} sensitivity at bits {','.join(map(str, args.bits))}, then allocating")
    if loaded.kind == "transformers":  # quantized in place, as from_pretrained(quantization_config=...) does
        result = quantize_pretrained(loaded.model, config, tokenizer=loaded.tokenizer, table=table)
    else:
        result = quantize_with_infoq(loaded.model, config, table=table, progress=True)
    model, table = result.model, result.table
    summary = dict(result.summary)
    summary["times_s"] = {"total": round(time.perf_counter() - started, 3), **summary.get("times_s", {})}
    summary["calibration"] = calibration_record(spec)

    save(
        model,
        out,
        tokenizer=loaded.tokenizer,
        table=table,
        policy=result.policy,
        config=config,
        summary=summary,
        base_model=loaded.base_model,
    )  # checkpoint, tokenizer, table, summary and card: whole or nothing
    print(format_summary(summary))
    saved = (
        "checkpoint, "
        + ("tokenizer, " if loaded.tokenizer is not None else "")
        + (f"{TABLE_FILE}, " if table is not None else "")
        + f"{SUMMARY_FILE}, README.md"
    )
    print(f"saved to {out}/ ({saved}); next: infoq report {out}")
    if args.push:
        commit = push_to_hub(out, args.push, private=args.private, overwrite=args.overwrite)
        print(f"pushed to {args.push}: {getattr(commit, 'commit_url', commit)}")
    return EXIT_OK
