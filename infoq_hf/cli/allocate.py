"""`infoq allocate`: bits for a budget from a saved sensitivity table (no model needed)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..allocation import allocate
from ..pipeline import condensed_policy
from .arguments import add_budget, budget_from_args, parse_bits, positive
from .common import EXIT_OK
from .inputs import read_table

NAME = "allocate"
HELP = "choose bits from a table under a budget"
DESCRIPTION = "Solve the bit allocation for a saved sensitivity table (no model needed)."
EXAMPLES = """\
  # bits for a budget from a saved table, in seconds
  infoq allocate scores.json --avg-bits 3.5 --out policy.json
  infoq allocate scores.json --avg-bits 3 --size-mb 600 --solver highs --out policy.json"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `infoq allocate`."""
    parser.add_argument("scores", metavar="SCORES", help="sensitivity table JSON written by infoq search / quantize")
    add_budget(parser)
    parser.add_argument("--bits", type=parse_bits, metavar="B,B,...", help="restrict to these candidate widths")
    parser.add_argument(
        "--solver", default="auto", choices=["auto", "gurobi", "highs"], help="ILP solver (default auto)"
    )
    parser.add_argument("--time-limit", type=positive(float), metavar="S", help="solver time limit in seconds")
    parser.add_argument("--out", required=True, metavar="POLICY.json", help="policy JSON to write")


def cmd_allocate(args) -> int:
    """Solve the allocation for the table under the budget; write the policy JSON."""
    budget = budget_from_args(args)
    table = read_table(args.scores, "SCORES")
    policy = allocate(table, budget, solver=args.solver, bits=args.bits, time_limit=args.time_limit)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    policy.to_json(out)
    print(f"policy for {len(policy)} layers -> {out}")
    print("\n".join(condensed_policy(policy.to_dict())))
    print(policy.report.summary())
    return EXIT_OK
