"""What a model card says: `card_context` turns a checkpoint (its config, summary, policy and table) into
the template's variables and the card's YAML metadata (base_model, license, pipeline_tag, tags, and a
`quantization` block with the policy summary)."""

from __future__ import annotations

from collections.abc import Mapping

from ..checkpoint_info import SUMMARY_FILE, CheckpointInfo
from ..names import unique_match
from ..origin import is_repo_id
from ..sensitivity.search import DATA_FREE_METHODS
from ..version import __version__
from .snippets import reproduce_command, usage_snippet

TAGS = ["infoq", "mixed-precision", "quantized"]


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
        "usage": usage_snippet(
            info.kind,
            repo_id,
            info.model_config,
            base_model=base_model,
            has_tokenizer=any(f["name"] in ("tokenizer.json", "tokenizer_config.json") for f in files or []),
        ),
        "files": list(files or []),
        "reproduce": reproduce_command(info, cal, base_model),
        "metrics": _metric_rows(summary),
        "plots": plot_list,
        "layers": rows,
        "has_table": table is not None,
        "infoq_version": __version__,
    }
