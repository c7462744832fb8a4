"""The `infoq` command: quantize, search, allocate, report, push.

Exit codes scripts can rely on: 0 success; 2 bad usage or bad input (a one-line `infoq: error:`
message on stderr); 1 an unexpected failure or a Hub that could not be reached (run with
--debug for the traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .allocation import SolverUnavailableError, allocate
from .bitwidth import MAX_BITS
from .calibration import calibration_record, spec_from_string
from .card import card_file_for, is_repo_id, write_model_card
from .checkpoint_info import SUMMARY_FILE, TABLE_FILE, read_checkpoint
from .config import DEFAULT_SCHEME, ROUNDING_CHOICES, InfoQConfig
from .defaults import DEFAULT_REFINE_CHAINS, DEFAULT_REFINE_PASSES
from .export import export_compressed_tensors
from .gguf import export_gguf, gguf_summary
from .hub import HubPublishError, push_to_hub
from .integrations.transformers import modules_kept_float, quantize_pretrained
from .names import unique_match
from .pipeline import condensed_policy, format_summary, load_calibration_batches, quantize_with_infoq
from .policy import BitPolicy, Budget
from .quant.scheme import UNSET, resolve_scheme
from .saving import card_location, save
from .sensitivity import DATA_FREE_METHODS, SensitivityTable, search
from .sensitivity.search import METHODS

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class UsageError(ValueError):
    """Bad command-line input (exit code 2)."""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- argument parsing helpers
def _bits(text: str) -> list[int]:
    try:
        bits = sorted({int(b) for b in text.split(",") if b.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--bits takes comma-separated integers such as 2,3,4,8, got {text!r}"
        ) from None
    if not bits or not all(2 <= b <= 8 for b in bits):
        raise argparse.ArgumentTypeError(f"--bits must list widths between 2 and 8, got {text!r}")
    return bits


def _positive(kind):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    return parse


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got {text!r}")
    return value


def _avg_bits(text: str) -> float:
    value = _positive(float)(text)
    if value > MAX_BITS:  # no packed width is wider (a budget below the narrowest is the ILP's to explain)
        raise argparse.ArgumentTypeError(
            f"--avg-bits is an average of packed widths, at most {MAX_BITS} bits; got "
            f"{text} (for float layers keep them out of the model's quantized layers)"
        )
    return value


def _group_size(text: str):
    if text.lower() in ("none", "channel", "per-channel", "0"):
        return None
    return _positive(int)(text)


def _add_budget(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("budget (at least one; several combine)")
    g.add_argument(
        "--avg-bits",
        type=_avg_bits,
        metavar="B",
        help="parameter-weighted average weight bits over the quantized layers, e.g. 3 or 4.5",
    )
    g.add_argument("--size-mb", type=_positive(float), metavar="MB", help="whole stored model size in MB (10^6 bytes)")
    g.add_argument("--bitops", type=_positive(float), metavar="N", help="sum over layers of MACs x w_bits x a_bits")
    g.add_argument(
        "--compression",
        type=_positive(float),
        metavar="X",
        help="fp32 bytes of the quantized weights over their packed bytes (>= 1)",
    )


def _budget(args):

    values = {
        "avg_bits": args.avg_bits,
        "size_bytes": None if args.size_mb is None else args.size_mb * 1e6,
        "bitops": args.bitops,
        "compression": args.compression,
    }
    if all(v is None for v in values.values()):
        raise UsageError("give a budget: --avg-bits, --size-mb, --bitops or --compression")
    return Budget(**{k: v for k, v in values.items() if v is not None})


def _add_model_and_calibration(parser: argparse.ArgumentParser, calib_required: bool) -> None:
    parser.add_argument(
        "model",
        metavar="MODEL",
        help="a transformers model folder (or Hub id), or timm:NAME / timm:PATH for timm models",
    )
    parser.add_argument(
        "--bits",
        type=_bits,
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
    c.add_argument("--samples", type=_positive(int), default=32, metavar="N", help="calibration samples (default 32)")
    c.add_argument(
        "--seq-len", type=_positive(int), default=512, metavar="L", help="tokens per text sample (default 512)"
    )
    c.add_argument("--batch-size", type=_positive(int), default=8, metavar="B", help="samples per batch (default 8)")
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
        type=_group_size,
        default=UNSET,
        metavar="G",
        help="weights per scale in Linear layers, or 'none' for one scale per output channel (default 128)",
    )
    q.add_argument(
        "--conv-group-size",
        type=_group_size,
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
        "--gptq-damp",
        type=float,
        default=0.01,
        metavar="F",
        help="gptq: Hessian dampening, a fraction of its mean diagonal (default 0.01)",
    )
    q.add_argument(
        "--gptq-act-order",
        action="store_true",
        help="gptq: round columns in order of decreasing activation energy (groups stay contiguous)",
    )
    q.add_argument("--seed", type=int, default=0, help="random seed of sampling and probing (default 0)")


# ----------------------------------------------------------------------------- models and data
class LoadedModel:
    """A float model as the CLI found it, with what is needed to reload, tokenize and save it."""

    def __init__(self, spec: str):
        self.spec = spec
        self.kind = "timm" if spec.startswith("timm:") else "transformers"
        self.tokenizer = None
        self.model_class = None
        self.base_model = None
        if self.kind == "timm":
            self.model = self._load_timm(spec[len("timm:") :])
        else:
            self.model = self._load_transformers(spec)
        self.model.eval()

    def _load_timm(self, name: str):
        import timm

        if not name:
            raise UsageError("timm:NAME needs a model name or folder after 'timm:', e.g. timm:resnet18.a1_in1k")
        if os.path.isdir(name):
            if not os.path.isfile(os.path.join(name, "config.json")):
                raise UsageError(f"{name} has no config.json; save timm models with timm.models.save_for_hf")
            # pretrained=True reads the folder's weights (without it timm builds a randomly initialised model)
            return timm.create_model(f"local-dir:{os.path.abspath(name)}", pretrained=True)
        if os.path.exists(name):
            raise UsageError(f"timm:PATH must be a folder saved with timm.models.save_for_hf, got the file {name}")
        try:
            model = timm.create_model(name, pretrained=True)
        except RuntimeError as e:
            if "Unknown model" in str(e):
                raise UsageError(f"timm has no model {name!r} (see timm.list_models())") from None
            raise
        self.base_model = getattr(model, "pretrained_cfg", {}).get("hf_hub_id")
        return model

    def _load_transformers(self, path: str):
        import transformers

        local = os.path.isdir(path)
        if local and not os.path.isfile(os.path.join(path, "config.json")):
            raise UsageError(
                f"{path} has no config.json: not a transformers model folder "
                "(for timm models write timm:NAME or timm:PATH)"
            )
        if not local and not is_repo_id(path):
            raise UsageError(f"MODEL {path!r} is neither a model folder nor a Hub id (for timm models: timm:NAME)")
        config = transformers.AutoConfig.from_pretrained(path)
        if getattr(config, "quantization_config", None):
            raise UsageError(f"{path} is already quantized; quantize its float original instead")
        arch = (getattr(config, "architectures", None) or [None])[0]
        self.model_class = getattr(transformers, arch, None) if arch else None
        self.model_class = self.model_class or transformers.AutoModel
        self.base_model = None if local else path
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError, TypeError, KeyError):
            self.tokenizer = None  # a vision model, or no tokenizer saved: images or data-free methods only
        return self.model_class.from_pretrained(path)

    def skip_modules(self, quantize_embeddings: bool = False) -> list[str]:
        """Layers transformers keeps in float by default (lm_head, a classifier; the embeddings unless
        `quantize_embeddings`); timm: none."""
        if self.kind != "transformers":
            return []

        return modules_kept_float(self.model, None, quantize_embeddings)


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


def load_batches(loaded: LoadedModel, spec: dict | None, method: str) -> list | None:

    if method in DATA_FREE_METHODS and spec is None:
        return None
    if spec is None:
        raise UsageError(f"--method {method} needs calibration data: pass --calib SPEC (or use --method weight_mse)")
    _say(f"loading calibration data: {spec['dataset']} ({spec['num_samples']} samples)")
    return load_calibration_batches(spec, loaded.model, tokenizer=loaded.tokenizer)


def run_search(args, loaded: LoadedModel, spec: dict | None, batches: list | None = None):

    batches = load_batches(loaded, spec, args.method) if batches is None else batches
    _say(f"scoring {args.method} sensitivity at bits {','.join(map(str, args.bits))}")
    return search(
        loaded.model,
        batches,
        bits=args.bits,
        method=args.method,
        seed=args.seed,
        scheme=_packing_scheme(args, DEFAULT_SCHEME),
        skip_modules=loaded.skip_modules(args.quantize_embeddings),
        embeddings=args.quantize_embeddings,
        progress=True,
    )


def _packing_scheme(args, default):
    """The packing flags given on the command line over `default` (a table's scheme, or the defaults)."""

    return resolve_scheme(
        None, default, group_size=args.group_size, conv_group_size=args.conv_group_size, symmetric=args.symmetric
    )


def _read_json(path: str | os.PathLike, flag: str, what: str, writer: str):
    """The JSON file named by `flag`; UsageError when it is missing or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{flag} {path}: no such {what} file (write one with {writer})")
    try:
        return path, json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{flag} {path} is not a {what} JSON ({e})") from None


def read_table(path: str | os.PathLike, flag: str):
    """A sensitivity table JSON named on the command line; UsageError when it is not one."""

    path, data = _read_json(path, flag, "sensitivity table", "infoq search")
    if not isinstance(data, dict) or not isinstance(data.get("layers"), dict):
        raise UsageError(
            f'{flag} {path} is not a sensitivity table: expected a JSON object with "layers" '
            f"(as infoq search writes), got a JSON {type(data).__name__}"
        )
    table = SensitivityTable.from_dict(data)
    table.validate()
    return table


def read_policy(path: str | os.PathLike, flag: str):
    """A policy JSON named on the command line; UsageError when it is not one."""

    path, data = _read_json(path, flag, "policy", "infoq allocate")
    policy = BitPolicy.from_dict(data)
    if not policy:
        raise UsageError(f"{flag} {path} lists no layers")
    return policy


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


# ----------------------------------------------------------------------------- commands
def cmd_quantize(args) -> int:

    spec = calibration_spec(args)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder; pass a folder path")
    table, policy = _given_table_and_policy(args)
    budget = None if policy is not None else _budget(args)
    started = time.perf_counter()
    _say(f"loading {args.model}")
    loaded = LoadedModel(args.model)
    if policy is None and table is None and spec is None and args.method not in DATA_FREE_METHODS:
        raise UsageError(
            f"--method {args.method} needs calibration data: pass --calib SPEC (or use --method weight_mse)"
        )
    packing = _packing_scheme(args, table.scheme if table is not None else DEFAULT_SCHEME)
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
        search_samples=args.search_samples,
        rounding=args.rounding,
        quantize_embeddings=args.quantize_embeddings,
        gptq_options={"damp": args.gptq_damp, "act_order": args.gptq_act_order},
    )
    if policy is not None:
        _say(f"applying the policy of {args.policy} ({len(policy)} entries; no search)")
    elif table is not None:
        _say(f"allocating on the table of {args.table} (no search)")
    else:
        _say(f"scoring {args.method} sensitivity at bits {','.join(map(str, args.bits))}, then allocating")
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


def cmd_search(args) -> int:
    started = time.perf_counter()
    spec = calibration_spec(args)
    _say(f"loading {args.model}")
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


def cmd_allocate(args) -> int:

    budget = _budget(args)
    table = read_table(args.scores, "SCORES")
    policy = allocate(table, budget, solver=args.solver, bits=args.bits, time_limit=args.time_limit)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    policy.to_json(out)
    print(f"policy for {len(policy)} layers -> {out}")
    print("\n".join(condensed_policy(policy.to_dict())))
    print(policy.report.summary())
    return EXIT_OK


def _format_table(info) -> str:

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


def cmd_push(args) -> int:

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


def cmd_export(args) -> int:

    if not Path(args.dir).is_dir():
        raise UsageError(f"{args.dir} is not a folder; pass the --out folder of infoq quantize")
    if args.format == "gguf":
        out = export_gguf(args.dir, args.out, tokenizer=args.tokenizer)
        summary = gguf_summary(out)
        print(
            f"wrote {out} ({summary['file_bytes'] / 1e6:.2f} MB, quantized tensors at "
            f"{summary['quantized_bits_per_weight']:.3f} bits per weight); run it with llama.cpp, e.g. "
            f"llama-cli -m {out}"
        )
        return EXIT_OK
    out = export_compressed_tensors(args.dir, args.out, target=args.target, kernels=args.kernels)
    if args.target == "vllm":
        print(
            f"wrote a compressed-tensors pack-quantized checkpoint for vLLM into {out}; it passed the rules of "
            "vLLM 0.33.0's loader (infoq_hf.vllm_rules); serve it with `vllm serve {out}` (not run on a GPU by "
            "these checks)"
        )
    else:
        print(
            f"wrote a compressed-tensors pack-quantized checkpoint into {out}; load it with "
            "AutoModelForCausalLM.from_pretrained (needs the compressed-tensors package, not infoq_hf)"
        )
    return EXIT_OK


# ----------------------------------------------------------------------------- parser
EXAMPLES = {
    "quantize": """\
  # search, allocate and pack a causal LM at 3 bits on average, calibrated on a local text file
  infoq quantize ./llama-1b --bits 2,3,4,8 --avg-bits 3 --calib wiki.txt --samples 64 --seq-len 512 \\
      --out ./llama-1b-infoq

  # a timm model under a size budget, images from a folder (class subfolders), then publish
  infoq quantize timm:resnet18.a1_in1k --size-mb 4 --calib ./imagenet-val-sample --samples 256 \\
      --out ./resnet18-infoq --push me/resnet18-infoq""",
    "search": """\
  # sensitivities once (then infoq allocate for many budgets, no model needed)
  infoq search ./llama-1b --calib wikitext --calib-config wikitext-2-raw-v1 --bits 2,3,4,8 --out scores.json""",
    "allocate": """\
  # bits for a budget from a saved table, in seconds
  infoq allocate scores.json --avg-bits 3.5 --out policy.json
  infoq allocate scores.json --avg-bits 3 --size-mb 600 --solver highs --out policy.json""",
    "report": """\
  infoq report ./llama-1b-infoq          # summary table, plots and README.md model card into the folder""",
    "push": """\
  infoq push ./llama-1b-infoq me/llama-1b-infoq --private""",
    "export": """\
  infoq export ./llama-1b-infoq --format compressed-tensors --out ./llama-1b-ct                # for transformers
  infoq export ./llama-1b-infoq --format compressed-tensors --target vllm --out ./llama-1b-vllm  # for vLLM
  infoq export ./llama-1b-infoq --format gguf --out ./llama-1b-infoq.gguf                        # for llama.cpp""",
}
FOOTER = """\
Load a result with `import infoq_hf; AutoModelForCausalLM.from_pretrained(DIR_OR_REPO)`, or for
timm `infoq_hf.load_quantized(DIR)` / `infoq_hf.hub.load_from_hub(REPO)`.
Exit codes: 0 ok, 2 bad usage or input, 1 unexpected failure. Pushing needs HF_TOKEN or `hf auth login`.
"""


def _epilog(*commands: str) -> str:
    """The examples of `commands` (each subcommand's --help shows only its own), then the common notes."""
    return "examples:\n" + "\n\n".join(EXAMPLES[c] for c in commands) + "\n\n" + FOOTER


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="infoq",
        formatter_class=fmt,
        epilog=_epilog(*EXAMPLES),
        description="InfoQ mixed-precision quantization: score each layer's sensitivity per bit-width, "
        "allocate bits under a budget with an integer program, pack, report and publish.",
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    q = sub.add_parser(
        "quantize",
        formatter_class=fmt,
        epilog=_epilog("quantize"),
        help="search + allocate + pack a model into a checkpoint folder",
        description="Score sensitivities, allocate bits under the budget, pack the weights and save "
        "the checkpoint (with the sensitivity table and a summary) into --out.",
    )
    _add_model_and_calibration(q, calib_required=False)
    _add_budget(q)
    q.add_argument("--solver", default="auto", choices=["auto", "gurobi", "highs"], help="ILP solver (default auto)")
    q.add_argument(
        "--refine-passes",
        type=_nonnegative_int,
        default=DEFAULT_REFINE_PASSES,
        metavar="N",
        help="whole-model passes refining the ILP's allocation by KL to the float model on the "
        f"calibration data (default {DEFAULT_REFINE_PASSES}; 0 = ILP only)",
    )
    q.add_argument(
        "--refine-chains",
        type=_positive(int),
        default=DEFAULT_REFINE_CHAINS,
        metavar="N",
        help="independent refinements from the same start; the best on held-out calibration data is "
        f"kept (default {DEFAULT_REFINE_CHAINS})",
    )
    q.add_argument(
        "--search-samples",
        type=_positive(int),
        default=None,
        metavar="N",
        help="calibration samples (the first N) the search and the refinement use; GPTQ rounds with "
        "all --samples (default: all)",
    )
    q.add_argument("--out", required=True, metavar="DIR", help="checkpoint folder to write")
    q.add_argument(
        "--table",
        metavar="SCORES.json",
        help="allocate from this sensitivity table (infoq search) instead of searching again",
    )
    q.add_argument(
        "--policy", metavar="POLICY.json", help="pack with this policy (infoq allocate) as it is: no search, no budget"
    )
    q.add_argument("--push", metavar="REPO", help="also push the result to this Hub repo (user/name)")
    q.add_argument("--private", action="store_true", help="with --push: create the repo private")
    q.add_argument("--overwrite", action="store_true", help="with --push: replace an existing repo's files")
    q.set_defaults(func=cmd_quantize)

    s = sub.add_parser(
        "search",
        formatter_class=fmt,
        epilog=_epilog("search"),
        help="score sensitivities into a JSON table",
        description="Score every quantizable layer at every candidate bit-width; write the table JSON.",
    )
    _add_model_and_calibration(s, calib_required=False)
    s.add_argument("--out", required=True, metavar="SCORES.json", help="sensitivity table to write")
    s.set_defaults(func=cmd_search)

    a = sub.add_parser(
        "allocate",
        formatter_class=fmt,
        epilog=_epilog("allocate"),
        help="choose bits from a table under a budget",
        description="Solve the bit allocation for a saved sensitivity table (no model needed).",
    )
    a.add_argument("scores", metavar="SCORES", help="sensitivity table JSON written by infoq search / quantize")
    _add_budget(a)
    a.add_argument("--bits", type=_bits, metavar="B,B,...", help="restrict to these candidate widths")
    a.add_argument("--solver", default="auto", choices=["auto", "gurobi", "highs"], help="ILP solver (default auto)")
    a.add_argument("--time-limit", type=_positive(float), metavar="S", help="solver time limit in seconds")
    a.add_argument("--out", required=True, metavar="POLICY.json", help="policy JSON to write")
    a.set_defaults(func=cmd_allocate)

    r = sub.add_parser(
        "report",
        formatter_class=fmt,
        epilog=_epilog("report"),
        help="summary table, plots and model card",
        description="Print the per-layer table of a quantized folder; write PNG plots and README.md.",
    )
    r.add_argument("dir", metavar="DIR", help="a folder written by infoq quantize")
    r.add_argument("--repo-id", help="the Hub id to show in the card's usage snippet")
    r.set_defaults(func=cmd_report)

    p = sub.add_parser(
        "push",
        formatter_class=fmt,
        epilog=_epilog("push"),
        help="publish a quantized folder to the Hub",
        description="Upload a quantized folder with its model card and plots in one atomic commit.",
    )
    p.add_argument("dir", metavar="DIR", help="a folder written by infoq quantize")
    p.add_argument("repo", metavar="REPO", help="Hub repo id, user/name or org/name")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an existing repo (one new commit)")
    p.add_argument("--base-model", help="Hub id of the float model, for the card's base_model metadata")
    p.add_argument("--revision", help="branch to commit to (default main)")
    p.add_argument("--message", help="commit message")
    p.set_defaults(func=cmd_push)

    e = sub.add_parser(
        "export",
        formatter_class=fmt,
        epilog=_epilog("export"),
        help="write another format",
        description="Convert a quantized folder into a checkpoint that other tools load without infoq_hf.",
    )
    e.add_argument("dir", metavar="DIR", help="a folder written by infoq quantize (a transformers model)")
    e.add_argument(
        "--format",
        required=True,
        choices=["compressed-tensors", "gguf"],
        help="compressed-tensors: pack-quantized, tokenizer, chat template and generation config copied; "
        "gguf: one file for llama.cpp (Llama-architecture models)",
    )
    e.add_argument(
        "--target",
        choices=["transformers", "vllm"],
        default="transformers",
        help="compressed-tensors only. transformers (default): loads with "
        "AutoModelForCausalLM.from_pretrained (tested: same logits as infoq_hf). vllm: the layout "
        "vLLM allocates (asymmetric zero points packed, which transformers cannot load); refused "
        "unless it passes rules read from vLLM 0.33.0's source (a WNA16 scheme per layer, one scheme "
        "per fused q/k/v and gate/up, tensor shapes). benchmarks/vllm_check.py asks vLLM 0.33.0 "
        "itself on CPU (schemes, parameter shapes, outputs at 2/4/8 bits); never served on a GPU",
    )
    e.add_argument(
        "--kernels",
        choices=["any", "marlin"],
        default="any",
        help="with --target vllm: any vLLM 0.33.0 CUDA kernel (2..8 bits), or Marlin only (4/8 bits "
        "symmetric, 4 asymmetric; groups 32/64/128 or per channel)",
    )
    e.add_argument("--out", required=True, metavar="OUT", help="folder to write (gguf: the new .gguf file)")
    e.add_argument(
        "--tokenizer",
        metavar="GGUF_OR_DIR",
        help="gguf only: copy the tokenizer from this GGUF file, or convert it from this folder "
        "(default: DIR's own byte-level BPE tokenizer)",
    )
    e.set_defaults(func=cmd_export)
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
        _say("infoq: interrupted")
        return 130
    except (HubPublishError, *bad_input_errors) as e:
        if args.debug:
            raise
        message = _one_line(e)
        if isinstance(e, PermissionError):
            message = f"permission denied writing {e.filename or 'the output'}; choose a folder you can write to"
        _say(f"infoq: error: {message}")
        return EXIT_USAGE if isinstance(e, bad_input_errors) else EXIT_FAILURE
    except Exception as e:  # noqa: BLE001 - the promise is exit code 1 with a readable line
        if args.debug:
            raise
        _say(f"infoq: unexpected {type(e).__name__}: {_one_line(e)} (run with --debug for the traceback)")
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
