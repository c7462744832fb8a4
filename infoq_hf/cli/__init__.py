"""The `infoq` command: quantize, search, allocate, report, push, export.

Exit codes scripts can rely on: 0 success; 2 bad usage or bad input (a one-line `infoq: error:`
message on stderr); 1 an unexpected failure or a Hub that could not be reached (run with
--debug for the traceback).

This module is the dispatcher (the parser and `main`, the console script); each command is a module of
its own (`quantize`, `search`, `allocate`, `report`, `push`, `export`: its name, help, examples, options
and handler), on shared `arguments` (option types and groups) and `inputs` (the model, calibration,
tables and policies the commands read).
"""

from __future__ import annotations

import argparse

from ..allocation import SolverUnavailableError
from ..hub import HubPublishError
from . import allocate, export, push, quantize, report, search
from .allocate import cmd_allocate
from .common import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, FORMATTER, UsageError, epilog, say
from .export import cmd_export
from .push import cmd_push
from .quantize import cmd_quantize
from .report import cmd_report
from .search import cmd_search

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_USAGE", "UsageError", "build_parser", "main"]

COMMANDS = (quantize, search, allocate, report, push, export)  # in the order --help lists them


def build_parser() -> argparse.ArgumentParser:
    """The `infoq` parser; each command's handler is looked up here, at call time."""
    parser = argparse.ArgumentParser(
        prog="infoq",
        formatter_class=FORMATTER,
        epilog=epilog(*(command.EXAMPLES for command in COMMANDS)),
        description="InfoQ mixed-precision quantization: score each layer's sensitivity per bit-width, "
        "allocate bits under a budget with an integer program, pack, report and publish.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    handlers = (cmd_quantize, cmd_search, cmd_allocate, cmd_report, cmd_push, cmd_export)
    for command, handler in zip(COMMANDS, handlers):
        command_parser = sub.add_parser(
            command.NAME,
            formatter_class=FORMATTER,
            epilog=epilog(command.EXAMPLES),  # each subcommand's --help shows only its own examples
            help=command.HELP,
            description=command.DESCRIPTION,
        )
        command.add_arguments(command_parser)
        command_parser.set_defaults(func=handler)
    return parser


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    if isinstance(error, KeyError) and text.startswith("'"):
        text = f"missing key {text}"
    return " ".join(text.split())


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2, message already printed by argparse)
        return int(e.code or 0)

    bad_input_errors = (
        ValueError,
        FileNotFoundError,
        NotADirectoryError,
        IsADirectoryError,
        PermissionError,
        SolverUnavailableError,
    )  # the last: a solver choice this machine cannot run
    try:
        return args.func(args)
    except KeyboardInterrupt:
        say("infoq: interrupted")
        return 130
    except (HubPublishError, *bad_input_errors) as e:
        if args.debug:
            raise
        message = _one_line(e)
        if isinstance(e, PermissionError):
            message = f"permission denied writing {e.filename or 'the output'}; choose a folder you can write to"
        say(f"infoq: error: {message}")
        return EXIT_USAGE if isinstance(e, bad_input_errors) else EXIT_FAILURE
    except Exception as e:  # noqa: BLE001 - the promise is exit code 1 with a readable line
        if args.debug:
            raise
        say(f"infoq: unexpected {type(e).__name__}: {_one_line(e)} (run with --debug for the traceback)")
        return EXIT_FAILURE
