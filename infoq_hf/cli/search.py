"""`infoq search`: score every layer's sensitivity at every candidate bit-width into a table JSON."""

from __future__ import annotations

import argparse
import time

from ..config import DEFAULT_SCHEME
from ..sensitivity import search
from .arguments import add_model_and_calibration, calibration_spec, packing_scheme
from .common import EXIT_OK, say
from .inputs import LoadedModel, load_batches

NAME = "search"
HELP = "score sensitivities into a JSON table"
DESCRIPTION = "Score every quantizable layer at every candidate bit-width; write the table JSON."
EXAMPLES = """\
  # sensitivities once (then infoq allocate for many budgets, no model needed)
  infoq search ./llama-1b --calib wikitext --calib-config wikitext-2-raw-v1 --bits 2,3,4,8 --out scores.json"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `infoq search`."""
    add_model_and_calibration(parser, calib_required=False)
    parser.add_argument("--out", required=True, metavar="SCORES.json", help="sensitivity table to write")


def run_search(args, loaded: LoadedModel, spec: dict | None, batches: list | None = None):
    """The sensitivity table of the loaded model for the command line's bits, method and packing."""
    batches = load_batches(loaded, spec, args.method) if batches is None else batches
    say(f"scoring {args.method} sensitivity at bits {','.join(map(str, args.bits))}")
    return search(
        loaded.model,
        batches,
        bits=args.bits,
        method=args.method,
        seed=args.seed,
        scheme=packing_scheme(args, DEFAULT_SCHEME),
        skip_modules=loaded.skip_modules(args.quantize_embeddings),
        embeddings=args.quantize_embeddings,
        progress=True,
    )


def cmd_search(args) -> int:
    started = time.perf_counter()
    spec = calibration_spec(args)
    say(f"loading {args.model}")
    loaded = LoadedModel(args.model)
    table = run_search(args, loaded, spec)
    table.save(args.out)
    ranked = sorted(table.layers, key=lambda n: -table.w(n, min(table.bits)))
    print(
        f"{table.method} sensitivity of {len(table)} layers at bits {table.bits} "
        f"in {time.perf_counter() - started:.1f}s -> {args.out}"
    )
    print(f"most sensitive at {min(table.bits)} bits:")
    for name in ranked[:5]:
        print(f"  {name:<48} {table.w(name, min(table.bits)):.4g}")
    print(f"next: infoq allocate {args.out} --avg-bits 4 --out policy.json")
    return EXIT_OK
