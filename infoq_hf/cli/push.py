"""`infoq push`: publish a quantized folder to the Hub in one commit."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..hub import push_to_hub
from .common import EXIT_OK, UsageError

NAME = "push"
HELP = "publish a quantized folder to the Hub"
DESCRIPTION = "Upload a quantized folder with its model card and plots in one atomic commit."
EXAMPLES = """\
  infoq push ./llama-1b-infoq me/llama-1b-infoq --private"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `infoq push`."""
    parser.add_argument("dir", metavar="DIR", help="a folder written by infoq quantize")
    parser.add_argument("repo", metavar="REPO", help="Hub repo id, user/name or org/name")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the files of an existing repo (one new commit)"
    )
    parser.add_argument("--base-model", help="Hub id of the float model, for the card's base_model metadata")
    parser.add_argument("--revision", help="branch to commit to (default main)")
    parser.add_argument("--message", help="commit message")


def cmd_push(args) -> int:
    """Upload the folder to the repo in one commit."""
    if not Path(args.dir).is_dir():
        raise UsageError(f"{args.dir} is not a folder; pass the --out folder of infoq quantize")
    commit = push_to_hub(
        args.dir,
        args.repo,
        private=args.private,
        overwrite=args.overwrite,
        base_model=args.base_model,
        commit_message=args.message,
        revision=args.revision,
    )
    print(f"pushed {args.dir} to {args.repo} in one commit: {getattr(commit, 'commit_url', commit)}")
    return EXIT_OK
