"""The model card of a packed checkpoint: its context, its template, the files written beside it.

`write_model_card(folder, read_checkpoint(folder), repo_id)` writes `README.md`, rendered from the one
template `templates/model_card.md.j2` (package data), and the PNG plots it shows. The card's YAML
metadata is built in Python (`card_context`) so the Hub understands it (base_model, base_model_relation:
quantized, library_name, license, pipeline_tag, tags, and a `quantization` block with the policy summary),
and `check_model_card` reads it back through `huggingface_hub.ModelCard`. The card is written by the
library's own save and push (`infoq_hf.save`, `infoq_hf.push_to_hub`, the `infoq` CLI), never by
transformers' `save_pretrained` / `push_to_hub`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from .checkpoint import INFOQ_CONFIG_NAME, WEIGHTS_NAME
from .checkpoint_info import SUMMARY_FILE, TABLE_FILE, CheckpointInfo
from .names import unique_match
from .origin import CARD_FILE, base_card_metadata, float_model_origin, is_repo_id
from .plots import plot_bits_per_layer, plot_pareto_curve, plot_sensitivity_heatmap
from .sensitivity.search import DATA_FREE_METHODS
from .version import __version__

TEMPLATE_PATH = Path(__file__).parent / "templates" / "model_card.md.j2"
CARD_FILE_BESIDE_USERS = "INFOQ_CARD.md"  # where the card goes when the folder holds a README.md of the user's
PLOT_FILES = {
    "bits": "infoq_bits_per_layer.png",
    "heatmap": "infoq_sensitivity_heatmap.png",
    "pareto": "infoq_pareto.png",
}
TAGS = ["infoq", "mixed-precision", "quantized"]


class ModelCardError(ValueError):
    """The model card template failed to render, or the rendered card is not valid."""


# ----------------------------------------------------------------------------- rendering
def _template_line(tb, filename: str) -> int | None:
    """The template line an exception was raised at (jinja2 maps its frames to template lines)."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


def render_model_card(context: Mapping, template: str | os.PathLike | None = None) -> str:
    """Render the model card template (default: the packaged `templates/model_card.md.j2`).

    Undefined variables are errors; any failure raises `ModelCardError` naming the template file and line."""
    import jinja2

    path = Path(template) if template is not None else TEMPLATE_PATH
    if not path.is_file():
        raise ModelCardError(f"model card template {path} does not exist")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(path.parent)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )
    try:
        return env.get_template(path.name).render(**context)
    except jinja2.TemplateSyntaxError as e:
        raise ModelCardError(f"model card template {e.filename or path}, line {e.lineno}: {e.message}") from None
    except Exception as e:  # undefined variables, bad filters, ...
        line = _template_line(e.__traceback__, str(path.resolve())) or _template_line(e.__traceback__, str(path))
        where = f", line {line}" if line else ""
        raise ModelCardError(f"model card template {path}{where}: {type(e).__name__}: {e}") from None


def _default_base_model(info: CheckpointInfo) -> str | None:
    """The Hub id of the float model, when the checkpoint remembers one (never a local path)."""
    candidates = [
        info.summary.get("base_model"),
        info.model_config.get("_name_or_path"),
        (info.model_config.get("pretrained_cfg") or {}).get("hf_hub_id"),
    ]
    return next((c for c in candidates if is_repo_id(c)), None)


def _calibration_dict(calibration, info: CheckpointInfo) -> dict | None:
    value = (
        calibration if calibration is not None else (info.summary.get("calibration") or info.config.get("calibration"))
    )
    if value is None:
        return None
    if hasattr(value, "to_dict"):
        value = value.to_dict()
    if isinstance(value, str):
        return {"dataset": value}
    if isinstance(value, Mapping):
        keep = (
            "dataset",
            "data_files",
            "config",
            "split",
            "text_column",
            "image_column",
            "num_samples",
            "seq_len",
            "seed",
            "batches",
            "samples",
            "sha256",
        )
        return {k: value[k] for k in keep if value.get(k) is not None}
    raise ValueError(f"calibration must be a CalibrationSpec, a dict or a dataset name, got {type(value).__name__}")


def _calibration_text(cal: dict | None, search_method: str) -> str:
    if not cal:
        return "none (data-free sensitivity)" if search_method in DATA_FREE_METHODS else "not recorded"
    source = cal.get("dataset") or "in-memory batches"
    if cal.get("data_files") and source in ("text", "json", "csv", "parquet"):
        files = cal["data_files"]
        source = f"{source} files {files if isinstance(files, str) else ', '.join(map(str, files))}"
    parts = [f"`{source}`"]
    if cal.get("config"):
        parts.append(f"config `{cal['config']}`")
    if cal.get("split"):
        parts.append(f"split `{cal['split']}`")
    if cal.get("num_samples"):
        parts.append(f"{cal['num_samples']} samples")
    if cal.get("seq_len") and cal.get("text_column"):
        parts.append(f"of {cal['seq_len']} tokens")
    return ", ".join(parts)


def _budget_text(budget: Mapping | None) -> str:
    if not budget:
        return "a given policy (no search)"
    units = {
        "avg_bits": lambda v: f"average bits <= {v:g}",
        "size_bytes": lambda v: f"size <= {v / 1e6:.3f} MB",
        "bitops": lambda v: f"BitOps <= {v:.4g}",
        "compression": lambda v: f"compression >= {v:g}x",
    }
    return ", ".join(units[k](v) for k, v in budget.items() if k in units)


def _usage(kind: str, location: str, model_config: Mapping, *, has_tokenizer: bool, base_model: str | None) -> str:
    """A snippet that runs as pasted: it loads from `location` and names only files the folder holds
    (a causal LM without a saved tokenizer uses its base model's, else plain token ids)."""
    if kind == "transformers":
        arch = (model_config.get("architectures") or [""])[0]
        auto = "AutoModel"
        for suffix, cls in (
            ("ForCausalLM", "AutoModelForCausalLM"),
            ("ForSequenceClassification", "AutoModelForSequenceClassification"),
            ("ForImageClassification", "AutoModelForImageClassification"),
            ("ForMaskedLM", "AutoModelForMaskedLM"),
        ):
            if arch.endswith(suffix):
                auto = cls
        head = 'import infoq_hf  # registers the "infoq" quantization method with transformers\n'
        if auto == "AutoModelForCausalLM" and (has_tokenizer or base_model):
            source, note = (location, "") if has_tokenizer else (base_model, "  # the base model's (none saved here)")
            return (
                f"{head}from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                f'tokenizer = AutoTokenizer.from_pretrained("{source}"){note}\n'
                f'model = AutoModelForCausalLM.from_pretrained("{location}")\n'
                'inputs = tokenizer("The quick brown fox", return_tensors="pt")\n'
                "output = model.generate(**inputs, max_new_tokens=32, do_sample=False)\n"
                "print(tokenizer.decode(output[0], skip_special_tokens=True))"
            )
        if auto == "AutoModelForCausalLM":
            return (
                f"{head}import torch\nfrom transformers import AutoModelForCausalLM\n\n"
                f'model = AutoModelForCausalLM.from_pretrained("{location}")\n'
                "ids = torch.tensor([[1, 2, 3, 4]])  # token ids of the base model's tokenizer (none saved here)\n"
                "print(model.generate(ids, max_new_tokens=8, do_sample=False))"
            )
        return f'{head}from transformers import {auto}\n\nmodel = {auto}.from_pretrained("{location}")'
    loader = (
        f'model = load_quantized("{location}")  # a timm model, packed'
        if kind == "timm"
        else f'model = load_quantized("{location}", model=MyModel())  # MyModel: your float architecture'
    )
    if is_repo_id(location):
        return "from infoq_hf.hub import load_from_hub\n\n" + loader.replace("load_quantized(", "load_from_hub(")
    return f"from infoq_hf import load_quantized\n\n{loader}"


FILE_ROLES = {
    "config.json": "model config; `quantization_config` holds the per-layer bits",
    INFOQ_CONFIG_NAME: "InfoQ settings and per-layer bits (for `infoq_hf.load_quantized`)",
    "generation_config.json": "generation defaults",
    TABLE_FILE: "sensitivity table the bits were allocated from",
    SUMMARY_FILE: "quantization summary (sizes, times, what was measured)",
    "tokenizer.json": "tokenizer",
    "tokenizer_config.json": "tokenizer settings",
    "special_tokens_map.json": "tokenizer special tokens",
    "chat_template.jinja": "chat template",
}


def _file_role(name: str) -> str:
    if name.endswith(".safetensors"):
        return "packed integer codes, scales and zero points, and the float tensors of unquantized layers"
    if name.endswith(".safetensors.index.json"):
        return "which shard holds which tensor"
    if name.endswith(".png"):
        return "plot shown in this card"
    return FILE_ROLES.get(name, "")


def checkpoint_files(directory: str | os.PathLike) -> list[dict]:
    """The files of a checkpoint folder (README.md and hidden entries aside), each with its size and role."""
    rows = []
    for path in sorted(Path(directory).iterdir()):
        if path.name == CARD_FILE or path.name.startswith(".") or not path.is_file() or path.is_symlink():
            continue
        rows.append({"name": path.name, "size": _size_text(path.stat().st_size), "role": _file_role(path.name)})
    return rows


def _size_text(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _model_name(info: CheckpointInfo, base_model: str | None) -> str:
    """The model's own name: its base model's, as recorded, else its architecture."""
    if base_model:
        return base_model.split("/")[-1]
    if info.summary.get("model_name"):
        return str(info.summary["model_name"])
    if info.kind == "timm" and info.model_config.get("architecture"):
        return str(info.model_config["architecture"])
    return str((info.model_config.get("architectures") or [info.model_config.get("model_type") or "model"])[0])


def _license(info: CheckpointInfo) -> str | None:
    """The base model's license: its card's (recorded at save), its config's, or timm's `pretrained_cfg`'s."""
    for value in (
        info.summary.get("license"),
        info.model_config.get("license"),
        (info.model_config.get("pretrained_cfg") or {}).get("license"),
    ):
        if isinstance(value, str) and value:
            return value
    return None


PIPELINE_TAGS = {
    "ForCausalLM": "text-generation",
    "ForSequenceClassification": "text-classification",
    "ForImageClassification": "image-classification",
    "ForMaskedLM": "fill-mask",
    "ForTokenClassification": "token-classification",
    "ForQuestionAnswering": "question-answering",
}


def _pipeline_tag(info: CheckpointInfo) -> str | None:
    """The base model's pipeline_tag when recorded, else the one its architecture implies."""
    if info.summary.get("pipeline_tag"):
        return info.summary["pipeline_tag"]
    if info.kind == "timm":
        return "image-classification"
    arch = (info.model_config.get("architectures") or [""])[0]
    return next((tag for suffix, tag in PIPELINE_TAGS.items() if arch.endswith(suffix)), None)


def _group_size_text(cfg: Mapping, summary: Mapping) -> str:
    """Linear grouping as packed: per layer, the requested size where it divides the layer's width."""
    sizes: dict = {}
    for lb in (summary.get("layers") or {}).values():
        if isinstance(lb, Mapping) and "group_size" in lb:
            sizes[lb["group_size"]] = sizes.get(lb["group_size"], 0) + 1
    if not sizes:
        return f"{cfg['group_size']} weights per scale" if cfg.get("group_size") else "one scale per output channel"
    parts = [
        ("one scale per output channel" if g is None else f"{g} weights per scale") + f" ({n} layers)"
        for g, n in sorted(sizes.items(), key=lambda kv: -(kv[0] or 0))
    ]
    if cfg.get("group_size") and set(sizes) != {cfg["group_size"]}:
        return f"requested {cfg['group_size']}, where it divides a layer's width; packed: " + ", ".join(parts)
    return ", ".join(parts)


def _reproduce_command(info: CheckpointInfo, cal: dict | None, base_model: str | None) -> str:
    """The `infoq quantize` command that redoes this allocation (local paths as base names)."""
    cfg = info.config
    model = base_model or "FLOAT_MODEL_DIR"
    if info.kind == "timm":
        model = f"timm:{(info.model_config.get('pretrained_cfg') or {}).get('hf_hub_id') or base_model or 'NAME'}"
    parts = [f"infoq quantize {model}", f"--bits {','.join(map(str, cfg.get('bits') or []))}"]
    flags = {"avg_bits": "--avg-bits", "compression": "--compression", "bitops": "--bitops"}
    for key, value in (cfg.get("budget") or {}).items():
        if key == "size_bytes":
            parts.append(f"--size-mb {value / 1e6:g}")
        elif key in flags:
            parts.append(f"{flags[key]} {value:g}")
    parts.append(f"--method {cfg.get('method', 'infoq')}")
    if cal:
        source = cal.get("data_dir") or cal.get("data_files") or cal.get("dataset")
        if isinstance(source, list):
            source = source[0] if len(source) == 1 else "CALIB_DIR"
        if isinstance(source, str) and not cal.get("source"):
            parts.append(f"--calib {source}")
        for key, flag in (("num_samples", "--samples"), ("seq_len", "--seq-len")):
            if cal.get(key):
                parts.append(f"{flag} {cal[key]}")
    parts.append(f"--group-size {cfg.get('group_size') or 'none'}")
    if cfg.get("symmetric"):
        parts.append("--symmetric")
    parts.append(f"--seed {cfg.get('seed', 0)} --out OUT_DIR")
    return " ".join(parts)


def _metric_rows(summary: Mapping) -> list[dict]:
    """`summary["metrics"]`: what the run measured, e.g. [{"metric": "perplexity", "data": "...",
    "quantized": 150.2, "float": 63.7}] (written by the demo, or by the user into infoq_summary.json)."""
    rows = []
    for m in summary.get("metrics") or []:
        if not isinstance(m, Mapping) or "metric" not in m or "quantized" not in m:
            raise ValueError(
                f"{SUMMARY_FILE} metrics entries need 'metric' and 'quantized' (and 'float', 'data'), got {m!r}"
            )
        rows.append(
            {
                "metric": str(m["metric"]),
                "data": str(m.get("data", "–")),
                "quantized": float(m["quantized"]),
                "float": None if m.get("float") is None else float(m["float"]),
            }
        )
    return rows


def card_context(
    info: CheckpointInfo,
    repo_id: str,
    *,
    base_model: str | None = None,
    calibration=None,
    plots: Mapping[str, str] | None = None,
    weights_bytes: int | None = None,
    tags: list[str] | None = None,
    files: list[dict] | None = None,
) -> dict:
    """The template variables and the YAML metadata of a checkpoint's model card. `repo_id`: where the
    snippet loads from (a Hub id, or a local folder as the user names it); `files`: `checkpoint_files`."""
    cfg, summary, table = info.config, info.summary, info.table
    base_model = base_model if base_model is not None else _default_base_model(info)
    if base_model is not None and not is_repo_id(base_model):
        raise ValueError(f"base_model must be a Hub model id such as 'meta-llama/Llama-3.2-1B', got {base_model!r}")
    search_method = (
        summary.get("method")
        if summary.get("method") not in (None, "policy (no search)")
        else (table.method if table is not None else cfg.get("method", "infoq"))
    )
    cal = _calibration_dict(calibration, info)
    budget = cfg.get("budget") or (summary.get("allocation") or {}).get("budget")
    size_bytes = int(weights_bytes if weights_bytes is not None else summary.get("size_bytes", 0))
    avg_bits = float(summary["avg_bits"])
    compression = summary.get("compression")
    policy = info.policy
    sens = {}
    if table is not None:
        for name, lb in policy.items():
            tname = unique_match(name, table.layers)
            if tname is not None:
                sens[name] = table.layers[tname]["w"].get(lb.w_bits)
    rows = [
        {"name": n, "params": info.params.get(n), "w_bits": lb.w_bits, "a_bits": lb.a_bits, "sensitivity": sens.get(n)}
        for n, lb in policy.items()
    ]
    hist = {}
    for lb in policy.values():
        hist[lb.w_bits] = hist.get(lb.w_bits, 0) + 1

    quantization = {
        "method": "infoq",
        "sensitivity": search_method,
        "candidate_bits": list(table.bits if table is not None else cfg.get("bits") or []),
        "budget": budget,
        "avg_bits": round(avg_bits, 4),
        "layers": len(policy),
        "layers_per_bits": {str(b): c for b, c in sorted(hist.items())},
        "size_bytes": size_bytes,
        "compression": None if compression is None else round(float(compression), 3),
        "group_size": cfg.get("group_size"),
        "conv_group_size": cfg.get("conv_group_size"),
        "symmetric": bool(cfg.get("symmetric", False)),
        "calibration": cal,
        "seed": cfg.get("seed", 0),
    }
    metadata: dict = {}
    if base_model:
        metadata["base_model"] = base_model
        metadata["base_model_relation"] = "quantized"
    if info.kind in ("transformers", "timm"):
        metadata["library_name"] = info.kind
    license_ = _license(info)
    if license_:
        metadata["license"] = license_
    pipeline_tag = _pipeline_tag(info)
    if pipeline_tag:
        metadata["pipeline_tag"] = pipeline_tag
    metadata["tags"] = list(dict.fromkeys(TAGS + ([info.kind] if info.kind == "timm" else []) + list(tags or [])))
    metadata["quantization"] = quantization

    import yaml

    float_size = summary.get("float_size_bytes")
    size_text = f"{size_bytes / 1e6:.3f} MB" + (f" (float: {float_size / 1e6:.3f} MB)" if float_size else "")
    grouping = [f"linear: {_group_size_text(cfg, summary)}"]
    grouping.append(
        f"conv: {cfg['conv_group_size']} per scale" if cfg.get("conv_group_size") else "conv: per output channel"
    )
    grouping.append("symmetric" if cfg.get("symmetric") else "asymmetric (zero points)")
    search_texts = {
        "infoq": "InfoQ information-flow sensitivity (how much a layer's quantization changes "
        "the information its output carries about the model's prediction)",
        "hawq": "HAWQ (Hessian-trace) sensitivity",
        "weight_mse": "weight quantization error (MSE)",
        "oracle": "the measured loss change of each layer",
        "random": "random scores (a control)",
        "size_only": "each layer's share of the weights times its relative weight error (no probing)",
        "llamacpp": "llama.cpp's K-quant mix rules (more bits for v_proj / down_proj in chosen blocks)",
    }
    plot_list = [
        {"file": f, "alt": alt}
        for key, alt in (
            ("bits", "bits per layer"),
            ("heatmap", "sensitivity heatmap"),
            ("pareto", "sensitivity vs size"),
        )
        if (f := (plots or {}).get(key))
    ]
    return {
        "metadata": metadata,
        "metadata_yaml": yaml.safe_dump(metadata, sort_keys=False, allow_unicode=True).rstrip("\n"),
        "title": f"{_model_name(info, base_model)}, InfoQ mixed precision ({avg_bits:.2f} bits average)",
        "repo_id": repo_id,
        "base_model": base_model,
        "candidate_bits": quantization["candidate_bits"],
        "search_method": search_method,
        "search_method_text": search_texts.get(search_method, f"the `{search_method}` sensitivity"),
        "budget_text": _budget_text(budget),
        "searched": bool(budget),
        "kind": info.kind,
        "avg_bits": avg_bits,
        "num_layers": len(policy),
        "size_text": size_text,
        "compression_text": "–" if compression is None else f"{float(compression):.2f}x vs fp32",
        "grouping_text": "; ".join(grouping),
        "calibration_text": _calibration_text(cal, search_method),
        "seed": quantization["seed"],
        "usage": _usage(
            info.kind,
            repo_id,
            info.model_config,
            base_model=base_model,
            has_tokenizer=any(f["name"] in ("tokenizer.json", "tokenizer_config.json") for f in files or []),
        ),
        "files": list(files or []),
        "reproduce": _reproduce_command(info, cal, base_model),
        "metrics": _metric_rows(summary),
        "plots": plot_list,
        "layers": rows,
        "has_table": table is not None,
        "infoq_version": __version__,
    }


def check_model_card(text: str, expected: Mapping | None = None):
    """Parse `text` with `huggingface_hub.ModelCard` and check its metadata survived the YAML round trip."""
    from huggingface_hub import ModelCard

    try:
        card = ModelCard(text)
    except Exception as e:  # yaml errors, a non-dict block, invalid card data
        raise ModelCardError(f"the rendered model card does not parse as a Hub model card: {e}") from None
    data = card.data.to_dict()
    for key, value in (expected or {}).items():
        if data.get(key) != value:
            raise ModelCardError(
                f"model card metadata {key!r} reads back as {data.get(key)!r}, expected {value!r}; "
                f"check the template {TEMPLATE_PATH.name}'s front matter"
            )
    return card


# ----------------------------------------------------------------------------- the files beside a checkpoint
def write_plots(directory: str | os.PathLike, info: CheckpointInfo) -> dict[str, str]:
    """Write the PNG plots for `info` into `directory`; returns {kind: file name}. Needs the table for the
    heatmap and the Pareto curve."""
    directory = Path(directory)
    written = {"bits": plot_bits_per_layer(info.policy, directory / PLOT_FILES["bits"], params=info.params).name}
    if info.table is not None:
        written["heatmap"] = plot_sensitivity_heatmap(info.table, directory / PLOT_FILES["heatmap"], info.policy).name
        kwargs = {
            "solver": info.config.get("solver", "auto"),
            "pin_first_last": info.config.get("pin_first_last", "auto"),
        }
        try:
            written["pareto"] = plot_pareto_curve(
                info.table, directory / PLOT_FILES["pareto"], info.policy, **kwargs
            ).name
        except ValueError:  # e.g. every budget pinned infeasible: the card simply has no curve
            pass
    return written


def write_model_card(
    directory: str | os.PathLike,
    info: CheckpointInfo,
    repo_id: str,
    *,
    base_model=None,
    calibration=None,
    template=None,
    tags: list[str] | None = None,
    card_file: str = CARD_FILE,
) -> str:
    """Plots + the card (`card_file`, see `card_file_for`) into `directory` (a checkpoint folder); returns the
    card text. `repo_id`: the Hub id the card's snippet loads from, or the local folder as the user would
    name it."""
    directory = Path(directory)
    plots = write_plots(directory, info)
    weights = directory / WEIGHTS_NAME
    context = card_context(
        info,
        repo_id,
        base_model=base_model,
        calibration=calibration,
        plots=plots,
        weights_bytes=weights.stat().st_size if weights.is_file() else None,
        tags=tags,
        files=checkpoint_files(directory),
    )
    text = render_model_card(context, template)
    expected = {
        k: context["metadata"][k]
        for k in ("base_model", "base_model_relation", "library_name", "license", "pipeline_tag", "tags")
        if k in context["metadata"]
    }
    check_model_card(text, expected)
    (directory / card_file).write_text(text)
    return text


def card_file_for(folder: str | os.PathLike) -> str:
    """README.md, unless `folder` already holds a README.md that is not an InfoQ card: that one is the user's
    and is kept, and the card goes to INFOQ_CARD.md beside it."""
    from huggingface_hub import ModelCard

    existing = Path(folder) / CARD_FILE
    if not existing.is_file():
        return CARD_FILE
    try:
        tags = ModelCard(existing.read_text(errors="replace")).data.to_dict().get("tags") or []
    except Exception:  # not a card at all: the user's file
        tags = []
    return CARD_FILE if TAGS[0] in tags else CARD_FILE_BESIDE_USERS


__all__ = [
    "CARD_FILE",
    "CARD_FILE_BESIDE_USERS",
    "card_file_for",
    "PLOT_FILES",
    "TEMPLATE_PATH",
    "ModelCardError",
    "base_card_metadata",
    "card_context",
    "check_model_card",
    "checkpoint_files",
    "float_model_origin",
    "is_repo_id",
    "render_model_card",
    "write_model_card",
    "write_plots",
]
