"""Sensitivity costs for the rounding the model will really be packed with.

The probes and the closed-form errors of a search are those of round-to-nearest. GPTQ leaves a
smaller output error, by a factor that depends on the layer (how correlated its inputs are) and on
the width (more at 2 bits than at 8). Costs that are a layer's sensitivity times its quantizer's
error — InfoQ's calibrated S(l, b) = alpha_l * t2(l, b), weight_mse's ||Q_b(W) - W||^2, hawq's
trace x ||Q_b(W) - W||^2 — are rescaled per (layer, width) by the ratio of the output error GPTQ
leaves to RTN's (`quant.gptq.GPTQCandidates.error_ratio`): the error GPTQ would leave, in the RTN
units the sensitivity was measured in. Scores that are not of this form (the paper's Eq. 4, the
oracle, random) are kept as they are, and the table says so.
"""

from __future__ import annotations

import copy
import logging

from .table import SensitivityTable

logger = logging.getLogger(__name__)

ERROR_SCALED_METHODS = ("weight_mse", "hawq")  # scores proportional to the quantizer's weight error


def error_scaled(table: SensitivityTable) -> bool:
    """Whether the table's weight scores are a sensitivity times the quantizer's error."""
    return table.method in ERROR_SCALED_METHODS or all("t2" in info for info in table.layers.values())


def with_gptq_costs(table: SensitivityTable, candidates) -> SensitivityTable:
    """A copy of `table` whose weight costs are those of GPTQ packing (see the module docstring).

    The RTN values are kept (`t2_rtn`, `w_rtn`), so converting again starts from them. Costs stay
    non-increasing in bits. A table whose scores are not error-scaled comes back unchanged, with
    `meta["costs_rounding"] = "rtn"`, or "gptq" when it was measured with GPTQ's weights
    (`search(..., candidates=)`)."""
    layers, meta = copy.deepcopy(table.layers), copy.deepcopy(table.meta)
    if not error_scaled(table):
        if meta.get("costs_rounding") == "gptq":  # measured with GPTQ's weights already
            return SensitivityTable(table.method, table.bits, layers, meta)
        logger.info(
            "the %s scores are not a sensitivity times the quantizer's error; the allocation uses them "
            "as measured (round to nearest)",
            table.method,
        )
        meta["costs_rounding"] = "rtn"
        return SensitivityTable(table.method, table.bits, layers, meta)
    missing = [n for n in table.layers if n not in candidates.error_ratio]
    if missing:
        raise ValueError(
            f"no GPTQ error ratios for layers {missing[:3]}; compute the candidates on the model the "
            "table was searched on"
        )
    for name, info in layers.items():
        ratio = candidates.error_ratio[name]
        absent = [b for b in table.bits if b not in ratio]
        if absent:
            raise ValueError(
                f"no GPTQ error ratio for layer {name!r} at bits {absent}; compute the candidates at "
                f"the table's widths {table.bits}"
            )
        if "t2" in info:
            info.setdefault("t2_rtn", dict(info["t2"]))
            info["t2"] = _non_increasing({b: info["t2_rtn"][b] * ratio[b] for b in table.bits})
            info["w"] = {b: info["alpha"] * info["t2"][b] for b in table.bits}
        else:
            info.setdefault("w_rtn", dict(info["w"]))
            info["w"] = _non_increasing({b: info["w_rtn"][b] * ratio[b] for b in table.bits})
        info["gptq_error_ratio"] = {b: ratio[b] for b in table.bits}
    meta["costs_rounding"] = "gptq"
    # what the candidates were (the per-layer prefix widths stay out: "inputs" names them in one line)
    meta["gptq_costs"] = {k: v for k, v in candidates.meta.items() if k != "prefix_bits"}
    return SensitivityTable(table.method, table.bits, layers, meta)


def _non_increasing(values: dict[int, float]) -> dict[int, float]:
    """A wider grid never costs more in the allocation's eyes (GPTQ's ratio can be noisy near 8 bits)."""
    running, out = 0.0, {}
    for b in sorted(values, reverse=True):
        running = max(running, values[b])
        out[b] = running
    return {b: out[b] for b in sorted(values)}


__all__ = ["ERROR_SCALED_METHODS", "error_scaled", "with_gptq_costs"]
