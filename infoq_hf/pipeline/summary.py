"""The run's summary: what was packed how, its size and times, and the one screen `format_summary` prints."""

from __future__ import annotations

import re
from collections import Counter, defaultdict

import torch.nn as nn

from ..accounting import compression_ratio, expected_size_bytes, mean_weight_bits, model_size_bytes, unpacked_bytes
from ..quant.apply import packed_layers
from ..quant.modules import lookup_scale
from ..quant.quantizer import effective_group_size


def summarize(
    model: nn.Module, params: dict[str, int], float_bytes: int, times: dict, *, method=None, report=None
) -> dict:
    """The summary of a packed `model`: per-layer widths and group sizes, average bits, sizes (`params`:
    weights per layer, `float_bytes`: the size before packing), `times` and the allocation's `report`."""
    layers = packed_layers(model)
    avg_bits = mean_weight_bits({k: params.get(k, 0) for k in layers}, {k: m.w_bits for k, m in layers.items()})
    return {
        "method": method or "policy (no search)",
        "layers": {
            k: {
                "w_bits": m.w_bits,
                "a_bits": m.a_bits,
                "group_size": effective_group_size(m.weight_shape, m.group_size),
            }
            for k, m in layers.items()
        },
        "quantized_layers": len(layers),
        "avg_bits": avg_bits,
        "size_bytes": model_size_bytes(model),
        "unpacked_bytes": unpacked_bytes(model),
        # embeddings `quantize_embeddings` could pack (see `quant.modules.lookup_scale`)
        "float_embeddings": sum(
            m.weight.numel() for m in model.modules() if isinstance(m, nn.Embedding) and lookup_scale(m) is not None
        ),
        "expected_size_bytes": expected_size_bytes(model),
        "float_size_bytes": float_bytes,
        "compression": compression_ratio(model) if layers else 1.0,
        "times_s": dict(times),
        "allocation": None if report is None else report.to_dict(),
    }


def _layer_pattern(name: str) -> str:
    """A layer name with its block indices folded into '*' (model.layers.3.mlp -> model.layers.*.mlp)."""
    return re.sub(r"\.\d+(?=\.|$)", ".*", name)


def condensed_policy(layers: dict[str, dict], max_rows: int = 24) -> list[str]:
    """One row per layer pattern (block indices folded into '*'), bits listed in block order."""
    rows: dict[str, list[str]] = defaultdict(list)
    for name, lb in layers.items():
        pattern = _layer_pattern(name)
        rows[pattern].append(str(lb["w_bits"]) + ("" if lb["a_bits"] is None else f"/a{lb['a_bits']}"))
    width = min(max((len(p) for p in rows), default=0), 48)
    lines = [f"  {p[-width:]:<{width}}  {' '.join(b)}" for p, b in rows.items()]
    if len(lines) > max_rows:
        lines = lines[: max_rows - 1] + [f"  ... {len(lines) - max_rows + 1} more layer patterns"]
    return lines


def group_size_lines(layers: dict[str, dict]) -> list[str]:
    """Which layers got which weight group size: a layer whose input width the requested size does not
    divide gets a smaller one (`quant.quantizer.effective_group_size`). Empty when not recorded."""
    by_group: dict[int | None, dict[str, int]] = defaultdict(Counter)
    for name, lb in layers.items():
        if "group_size" in lb:
            by_group[lb["group_size"]][_layer_pattern(name)] += 1
    lines = ["  weight group size per layer:"] if by_group else []
    for group, patterns in sorted(by_group.items(), key=lambda kv: -(kv[0] or 0)):
        label = "per output channel" if group is None else f"{group} weights per scale"
        lines.append(f"    {label}: {sum(patterns.values())} layers ({', '.join(patterns)})")
    return lines


def format_summary(summary: dict) -> str:
    """The summary on one screen: bits per layer pattern, widths, sizes, the refinement, times."""
    hist = Counter(lb["w_bits"] for lb in summary["layers"].values())
    mib = 1 / 2**20
    out = [
        f"InfoQ quantization ({summary['method']}, {summary.get('rounding', 'rtn')} rounding): "
        f"{summary['quantized_layers']} layers packed",
        "  bits per layer pattern (w_bits[/a_bits], in block order):",
        *condensed_policy(summary["layers"]),
        "  layers per width: " + ", ".join(f"{b} bits x{c}" for b, c in sorted(hist.items())),
        *group_size_lines(summary["layers"]),
        f"  average weight bits {summary['avg_bits']:.3f}, weight compression {summary['compression']:.2f}x",
        f"  model size {summary['size_bytes'] * mib:.2f} MiB (float {summary['float_size_bytes'] * mib:.2f} MiB)"
        + unpacked_note(summary),
        "  time: " + ", ".join(f"{k} {v:.2f}s" for k, v in summary["times_s"].items()),
    ]
    if summary.get("float_embeddings") and summary.get("unpacked_bytes", 0) > summary["size_bytes"] / 2:
        hint = "quantize_embeddings=True with a size budget allocates the embedding"
        out.insert(-1, f"  most of the checkpoint stays float: {hint}")
    refined = (summary.get("allocation") or {}).get("refinement")
    if refined:
        out.insert(-1, whole_model_line(refined))
    return "\n".join(out)


def unpacked_note(summary: dict) -> str:
    """How much of the checkpoint stays float, and in which dtype (older summaries: the dtype only)."""
    dtype = f" in {summary['float_dtype']}" if summary.get("float_dtype") else ""
    if "unpacked_bytes" not in summary:
        return f"; unpacked tensors{dtype}" if dtype else ""
    share = summary["unpacked_bytes"] / max(summary["size_bytes"], 1)
    return f"; unpacked tensors{dtype}: {summary['unpacked_bytes'] / 2**20:.2f} MiB ({share:.0%})"


def whole_model_line(refined: dict) -> str:
    """What the whole-model check (and any refinement moves) found: each start's KL to the float model,
    the moves tried, and what was kept."""
    starts = refined.get("kl_starts") or {"ilp": refined["kl_ilp"]}
    line = "  whole-model check, KL to float: " + ", ".join(f"{name} {kl:.4g}" for name, kl in starts.items())
    moves = refined["passes"] - len(starts)
    if moves > 0:
        line += (
            f"; {moves} refinement moves from {refined['start']} ({refined.get('chains', 1)} chains), "
            f"{refined['accepted']} accepted, KL {refined['kl_final']:.4g}"
        )
        if refined.get("kl_validation"):
            line += f"; the held-out check on {refined['validation_batches']} more calibration batch(es)"
    line += f"; kept {refined['kept']}"
    if refined.get("kl_roundings"):
        kls = ", ".join(f"{name} {kl:.4g}" for name, kl in refined["kl_roundings"].items())
        line += f"\n  GPTQ rounding of the kept allocation, KL to float: {kls}; packed from {refined['rounding_kept']}"
    return line
