"""Search + allocate + quantize + save (+ push) a causal LM with InfoQ, the search split over processes.

    accelerate launch --config_file recipes/causal_lm/accelerate_gpu.yaml recipes/causal_lm/quantize_causal_lm.py \
        --model path/to/float_model --calib corpus.txt --avg-bits 3 --out out/model-infoq-3bit

Every process loads the float model and the same calibration batches and calls
`infoq_hf.quantize_pretrained` (the pipeline of quantize-on-load): the search runs each process's
share of the observer terms' backward passes (or of the probes) and gathers the table, the
allocation's refinement splits its candidates over the processes, and every process packs the same
model. The main process writes the packed checkpoint (plain `from_pretrained(out)` reloads it after
`import infoq_hf`), the table and policy.json.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for `recipes.common`

import torch  # noqa: E402

from infoq_hf.defaults import DEFAULT_REFINE_CHAINS, DEFAULT_REFINE_PASSES  # noqa: E402
from recipes.common import barrier, log, make_accelerator, push_folder, write_json  # noqa: E402

RECIPE = "recipes/causal_lm"
_BUILDERS = {".txt": "text", ".text": "text", ".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a local transformers causal LM folder (or a Hub name you can reach)")
    p.add_argument(
        "--calib",
        required=True,
        help="calibration text: a .txt/.json/.jsonl/.csv/.parquet file, or a datasets name / save_to_disk folder",
    )
    p.add_argument("--text-column", default="text")
    p.add_argument("--split", default="train")
    p.add_argument("--num-samples", type=int, default=128, help="calibration windows of --seq-len tokens")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--avg-bits", type=float, default=3.0, help="budget: parameter-weighted mean weight bits")
    p.add_argument("--bits", default="2,3,4,8", help="candidate bit-widths, comma separated")
    p.add_argument("--group-size", type=int, default=128, help="inputs per scale group (0: per output channel)")
    p.add_argument("--symmetric", action="store_true")
    p.add_argument(
        "--rounding",
        choices=["auto", "rtn", "gptq"],
        default="auto",
        help="rounding of the packed weights (default auto: gptq, from the calibration windows, when "
        "they hold >= 4096 tokens, else rtn)",
    )
    p.add_argument("--method", default="infoq", help="infoq, hawq, weight_mse, random or oracle")
    p.add_argument("--num-directions", type=int, default=None, help="InfoQ: random projections per observer")
    p.add_argument("--solver", default="auto", help="auto, highs or gurobi")
    p.add_argument(
        "--refine-passes",
        type=int,
        default=DEFAULT_REFINE_PASSES,
        help="random moves refining the allocation (split over processes; 0: none, the allocation is only "
        "compared with uniform)",
    )
    p.add_argument(
        "--refine-chains",
        type=int,
        default=DEFAULT_REFINE_CHAINS,
        help="independent refinements; the best on held-out calibration data is kept",
    )
    p.add_argument(
        "--search-samples",
        type=int,
        default=None,
        help="calibration samples (the first N) the search and refinement use; GPTQ uses all (default: all)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="dtype the float model is loaded (and probed) in",
    )
    p.add_argument(
        "--out", required=True, help="folder for the packed checkpoint (+ infoq_sensitivity.json, policy.json)"
    )
    p.add_argument("--push-to-hub", default=None, metavar="REPO_ID", help="also upload the folder to this Hub repo")
    p.add_argument("--hub-token", default=None)
    p.add_argument("--private", action="store_true")
    p.add_argument("--cpu", action="store_true", help="run every process on the CPU (gloo), even with GPUs present")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def calibration_spec(args) -> dict:
    path = Path(args.calib)
    spec = dict(
        split=args.split,
        text_column=args.text_column,
        num_samples=args.num_samples,
        seq_len=args.seq_len,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    if path.is_file():
        builder = _BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise SystemExit(f"--calib {path}: unknown file type {path.suffix!r}; use one of {sorted(_BUILDERS)}")
        return dict(spec, dataset=builder, data_files=str(path))
    return dict(spec, dataset=args.calib)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import infoq_hf  # registers quant_method "infoq" with transformers
    from infoq_hf import Budget, InfoQConfig, quantize_pretrained

    bits = [int(b) for b in args.bits.split(",")]
    accelerator = make_accelerator(args.cpu, RECIPE)
    started = time.perf_counter()

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=getattr(torch, args.dtype))
    model = model.to(accelerator.device).eval()
    options = {} if args.num_directions is None or args.method != "infoq" else {"num_directions": args.num_directions}
    config = InfoQConfig(
        bits=bits,
        budget=Budget(avg_bits=args.avg_bits),
        method=args.method,
        method_options=options,
        calibration=calibration_spec(args),
        group_size=args.group_size or None,
        symmetric=args.symmetric,
        solver=args.solver,
        seed=args.seed,
        rounding=args.rounding,
        refine_passes=args.refine_passes,
        refine_chains=args.refine_chains,
        search_samples=args.search_samples,
    )
    log(
        accelerator,
        f"{accelerator.num_processes} process(es) on {accelerator.device}: calibration {args.num_samples} "
        f"x {args.seq_len} tokens of {args.calib}",
    )
    result = quantize_pretrained(
        model, config, tokenizer=tokenizer, accelerator=accelerator, progress=not args.no_progress
    )
    log(accelerator, f"allocation: {result.policy.report.summary()}")
    out = Path(args.out)
    summary = {}
    if accelerator.is_main_process:
        infoq_hf.save(model, out, tokenizer=tokenizer, table=result.table)  # checkpoint, tokenizer, table, card
        result.policy.to_json(out / "policy.json")
        summary = {
            "out": str(out),
            "search_s": result.summary["times_s"].get("search"),
            "total_s": time.perf_counter() - started,
            "processes": accelerator.num_processes,
            "layers": len(result.table.layers),
            "allocation": result.policy.report.to_dict(),
        }
        write_json(out / "recipe_result.json", summary)
        log(accelerator, f"saved the packed checkpoint to {out} (search {summary['search_s']:.1f} s)")
        if args.push_to_hub:
            summary["pushed"] = push_folder(out, args.push_to_hub, args.hub_token, args.private)
            log(accelerator, f"pushed to {summary['pushed']}")
    barrier(accelerator)
    return summary


if __name__ == "__main__":
    main()
