"""What every `infoq` command shares: the exit codes, the usage error, progress lines and the help's footer."""

from __future__ import annotations

import argparse
import sys

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
FORMATTER = argparse.RawDescriptionHelpFormatter  # the examples keep their line breaks


class UsageError(ValueError):
    """Bad command-line input (exit code 2)."""


def say(message: str) -> None:
    """A progress line on stderr (stdout keeps the results)."""
    print(message, file=sys.stderr, flush=True)


FOOTER = """\
Load a result with `import infoq_hf; AutoModelForCausalLM.from_pretrained(DIR_OR_REPO)`, or for
timm `infoq_hf.load_quantized(DIR)` / `infoq_hf.hub.load_from_hub(REPO)`.
Exit codes: 0 ok, 2 bad usage or input, 1 unexpected failure. Pushing needs HF_TOKEN or `hf auth login`.
"""


def epilog(*examples: str) -> str:
    """The given commands' examples (each subcommand's --help shows only its own), then the common notes."""
    return "examples:\n" + "\n\n".join(examples) + "\n\n" + FOOTER
