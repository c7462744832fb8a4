"""Command-line options the commands share: value types with errors that name the flag, the budget
group, the model / calibration / quantizer groups, and what they turn into (a Budget, a calibration
spec, a packing scheme)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..bitwidth import MAX_BITS
from ..calibration import spec_from_string
from ..config import ROUNDING_CHOICES
from ..policy import Budget
from ..quant.gptq.algorithm import DEFAULT_DAMP
from ..quant.scheme import UNSET, resolve_scheme
from ..sensitivity.search import METHODS
from .common import UsageError

CLIP_CHOICES = ("auto", "on", "off")


def parse_bits(text: str) -> list[int]:
    """--bits: comma-separated widths between 2 and 8, sorted and deduplicated."""
    try:
        bits = sorted({int(b) for b in text.split(",") if b.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--bits takes comma-separated integers such as 2,3,4,8, got {text!r}"
        ) from None
    if not bits or not all(2 <= b <= 8 for b in bits):
        raise argparse.ArgumentTypeError(f"--bits must list widths between 2 and 8, got {text!r}")
    return bits


def positive(kind):
    """An argparse type: `kind` (int or float) of a value > 0."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    return parse


def nonnegative_int(text: str) -> int:
    """An argparse type: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def avg_bits(text: str) -> float:
    """--avg-bits: a positive average of at most the widest packed width."""
    value = positive(float)(text)
    if value > MAX_BITS:  # no packed width is wider (a budget below the narrowest is the ILP's to explain)
        raise argparse.ArgumentTypeError(
            f"--avg-bits is an average of packed widths, at most {MAX_BITS} bits; got "
            f"{text} (for float layers keep them out of the model's quantized layers)"
        )
    return value


def group_size(text: str):
    """--group-size: a positive size, or none/channel/0 for one scale per output channel."""
    if text.lower() in ("none", "channel", "per-channel", "0"):
        return None
    return positive(int)(text)


def add_budget(parser: argparse.ArgumentParser) -> None:
    """The budget flags (--avg-bits, --size-mb, --bitops, --compression)."""
    g = parser.add_argument_group("budget (at least one; several combine)")
    g.add_argument(
        "--avg-bits",
        type=avg_bits,
        metavar="B",
        help="parameter-weighted average weight bits over the quantized layers, e.g. 3 or 4.5",
    )
    g.add_argument("--size-mb", type=positive(float), metavar="MB", help="whole stored model size in MB (10^6 bytes)")
    g.add_argument("--bitops", type=positive(float), metavar="N", help="sum over layers of MACs x w_bits x a_bits")
    g.add_argument(
        "--compression",
        type=positive(float),
        metavar="X",
        help="fp32 bytes of the quantized weights over their packed bytes (>= 1)",
    )


def budget_from_args(args):
    """The Budget of the budget flags; UsageError when none is given."""
    values = {
        "avg_bits": args.avg_bits,
        "size_bytes": None if args.size_mb is None else args.size_mb * 1e6,
        "bitops": args.bitops,
        "compression": args.compression,
    }
    if all(v is None for v in values.values()):
        raise UsageError("give a budget: --avg-bits, --size-mb, --bitops or --compression")
    return Budget(**{k: v for k, v in values.items() if v is not None})


def add_model_and_calibration(parser: argparse.ArgumentParser, calib_required: bool) -> None:
    """MODEL, the candidate bits and method, the calibration data and the quantizer settings."""
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="a transformers model folder (or Hub id), or timm:NAME / timm:PATH for timm models",
    )
    parser.add_argument(
        "--bits",
        type=parse_bits,
        default=[2, 3, 4, 8],
        metavar="B,B,...",
        help="candidate weight bit-widths (default: 2,3,4,8)",
    )
    parser.add_argument(
        "--method",
        default="infoq",
        choices=list(METHODS),
        help="sensitivity measure (default: infoq; weight_mse and random need no data)",
    )
    parser.add_argument(
        "--quantize-embeddings",
        action="store_true",
        help="the input embeddings are layers of the search and the allocation too (a tied LM "
        "head takes its embedding's codes)",
    )
    c = parser.add_argument_group("calibration data")
    c.add_argument(
        "--calib",
        metavar="SPEC",
        required=False,
        help="a local .txt/.json/.jsonl/.csv/.parquet file or a folder of them (or of images), "
        "a datasets save_to_disk folder, or a datasets Hub name"
        + (" (required unless --method is weight_mse or random)" if not calib_required else ""),
    )
    c.add_argument("--samples", type=positive(int), default=32, metavar="N", help="calibration samples (default 32)")
    c.add_argument(
        "--seq-len", type=positive(int), default=512, metavar="L", help="tokens per text sample (default 512)"
    )
    c.add_argument("--batch-size", type=positive(int), default=8, metavar="B", help="samples per batch (default 8)")
    c.add_argument("--calib-config", metavar="NAME", help="the dataset's config (subset) name")
    c.add_argument("--split", default="train", help="dataset split (default train)")
    c.add_argument("--text-column", default="text", help="text column (default text)")
    c.add_argument("--image-column", default="image", help="image column (default image)")
    c.add_argument(
        "--label-column", help="label column (images; default: the float model's own top-1 class labels each image)"
    )
    q = parser.add_argument_group("quantizer settings")
    # Unset packing flags come from --table's scheme when one is given (the sizes it budgets), else the defaults.
    q.add_argument(
        "--group-size",
        type=group_size,
        default=UNSET,
        metavar="G",
        help="weights per scale in Linear layers, or 'none' for one scale per output channel (default 128)",
    )
    q.add_argument(
        "--conv-group-size",
        type=group_size,
        default=UNSET,
        metavar="G",
        help="the same for Conv2d layers (default: per output channel)",
    )
    q.add_argument("--symmetric", action="store_true", default=UNSET, help="symmetric codes (no zero points)")
    q.add_argument(
        "--rounding",
        choices=ROUNDING_CHOICES,
        default="auto",
        help="how packed weights are rounded: rtn (to nearest), gptq (error-compensating, from the "
        "calibration data) or auto (default: gptq for causal LMs calibrated on >= 4096 tokens, else rtn)",
    )
    q.add_argument(
        "--clip-search",
        choices=CLIP_CHOICES,
        default="auto",
        help="shrink each group's range to the clipping ratio with the least squared error before rounding: "
        "on, off or auto (default: on with gptq rounding)",
    )
    q.add_argument(
        "--gptq-damp",
        type=float,
        default=DEFAULT_DAMP,
        metavar="F",
        help=f"gptq: Hessian dampening, a fraction of its mean diagonal (default {DEFAULT_DAMP})",
    )
    q.add_argument(
        "--gptq-act-order",
        action="store_true",
        help="gptq: round columns in order of decreasing activation energy (groups stay contiguous)",
    )
    q.add_argument("--seed", type=int, default=0, help="random seed of sampling and probing (default 0)")


def calibration_spec(args) -> dict | None:
    """A CalibrationSpec dict from --calib SPEC and its options."""
    spec = args.calib
    if spec is None:
        return None
    options = {
        "num_samples": args.samples,
        "seq_len": args.seq_len,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "split": args.split,
        "text_column": args.text_column,
        "image_column": args.image_column,
        "label_column": args.label_column,
        "config": args.calib_config,
    }

    path = Path(spec)
    if path.is_file() and (
        path.stat().st_size == 0
        or (path.suffix.lower() in (".txt", ".text", ".md") and not path.read_text(errors="replace").strip())
    ):
        raise UsageError(f"--calib {spec} is empty; give a file that holds calibration text")
    try:
        return spec_from_string(spec, **options).to_dict()
    except ValueError as e:
        raise UsageError(f"--calib {spec}: {e}") from None


def packing_scheme(args, default):
    """The packing flags given on the command line over `default` (a table's scheme, or the defaults)."""
    clip = clip_search_setting(args)
    return resolve_scheme(
        None,
        default,
        group_size=args.group_size,
        conv_group_size=args.conv_group_size,
        symmetric=args.symmetric,
        clip_search=UNSET if clip == "auto" else clip,
    )


def clip_search_setting(args) -> bool | str:
    """`--clip-search` as InfoQConfig's `clip_search`."""
    return {"on": True, "off": False}.get(args.clip_search, "auto")
