"""`infoq report`: the per-layer table of a quantized folder, its plots and its model card."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..card import card_file_for, write_model_card
from ..checkpoint_info import read_checkpoint
from ..names import unique_match
from ..saving import card_location
from .common import EXIT_OK, UsageError

NAME = "report"
HELP = "summary table, plots and model card"
DESCRIPTION = "Print the per-layer table of a quantized folder; write PNG plots and README.md."
EXAMPLES = """\
  infoq report ./llama-1b-infoq          # summary table, plots and README.md model card into the folder"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `infoq report`."""
    parser.add_argument("dir", metavar="DIR", help="a folder written by infoq quantize")
    parser.add_argument("--repo-id", help="the Hub id to show in the card's usage snippet")


def _format_table(info) -> str:
    """The per-layer table: params, bits and the sensitivity at the chosen width."""
    rows = []
    for name, lb in info.policy.items():
        tname = unique_match(name, info.table.layers) if info.table is not None else None
        score = info.table.layers[tname]["w"].get(lb.w_bits) if tname is not None else None
        rows.append(
            (
                name,
                f"{info.params.get(name, 0):,}",
                str(lb.w_bits),
                "float" if lb.a_bits is None else str(lb.a_bits),
                "-" if score is None else f"{score:.4g}",
            )
        )
    header = ("layer", "params", "w_bits", "a_bits", "sensitivity")
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    line = "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    return "\n".join([line.format(*header), "  ".join("-" * w for w in widths)] + [line.format(*r) for r in rows])


def cmd_report(args) -> int:
    """Write the card and plots into the folder; print its per-layer table and totals."""
    directory = Path(args.dir)
    if not directory.is_dir():
        raise UsageError(f"{directory} is not a folder; pass the --out folder of infoq quantize")
    info = read_checkpoint(directory)
    s = info.summary

    card_file = card_file_for(directory)
    write_model_card(directory, info, args.repo_id or card_location(args.dir), card_file=card_file)
    print(_format_table(info))
    hist = {}
    for lb in info.policy.values():
        hist[lb.w_bits] = hist.get(lb.w_bits, 0) + 1
    print(
        f"\n{len(info.policy)} layers ({', '.join(f'{b} bits x{c}' for b, c in sorted(hist.items()))}); "
        f"average {s['avg_bits']:.3f} bits; size {s['size_bytes'] / 1e6:.3f} MB; "
        f"compression {s.get('compression', float('nan')):.2f}x"
    )
    plots = sorted(p.name for p in directory.glob("infoq_*.png"))
    print(f"wrote {card_file} and {', '.join(plots)} into {directory}")
    return EXIT_OK
