"""Exact resource costs of a bit assignment, computed from a `SensitivityTable`.

One place for the arithmetic that the ILP rows, the verifier and the report all
share, so the three can never disagree on a convention (see `infoq_hf.accounting`):
- size: packed bytes of every table layer (codes, scales, zero points, from
  `table.layer_bytes`) plus `meta["float_bytes"]` (what stays float);
- BitOps: MACs x w_bits x a_bits, float activations counting 32 bits;
- average bits: sum n_l b_l / sum n_l over the table's layers;
- compression: fp32 bytes of the layers' weights / their packed bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..accounting import FLOAT_BITS
from ..sensitivity.table import SensitivityTable

# Budget kinds in a fixed order, so rows, messages and reports are reproducible.
BUDGET_KINDS = ("avg_bits", "size_bytes", "bitops", "compression")


def activation_width(a_bits: int | None) -> int:
    """Bits an activation is counted with in BitOps: its width, or 32 when it stays float."""
    return FLOAT_BITS if a_bits is None else a_bits


def total_params(table: SensitivityTable) -> int:
    return sum(info["params"] for info in table.layers.values())


def float_weight_bytes(table: SensitivityTable) -> float:
    """fp32 bytes of every table layer's weight: the numerator of the compression ratio."""
    return sum(table.float_layer_bytes(name) for name in table.layers)


def extra_float_bytes(table: SensitivityTable) -> int:
    """What the model stores besides the quantizable weights (0 when the table does not say)."""
    return int(table.meta.get("float_bytes", 0) or 0)


def layer_cost(table: SensitivityTable, kind: str, name: str, w_bits: int, a_bits: int | None) -> float:
    """The share of layer `name` in the budget row of `kind`, in that row's linear form.

    avg_bits -> n_l * w (compare with avg * sum n_l); size_bytes and compression -> packed
    bytes (compare with the size minus float bytes, or fp32 bytes / ratio); bitops -> MACs*w*a.
    """
    info = table.layers[name]
    if kind == "avg_bits":
        return info["params"] * w_bits
    if kind in ("size_bytes", "compression"):
        return table.layer_bytes(name, w_bits)
    if kind == "bitops":
        return info["macs"] * w_bits * activation_width(a_bits)
    raise ValueError(f"unknown budget kind {kind!r}; expected one of {BUDGET_KINDS}")


def row_capacity(table: SensitivityTable, kind: str, limit: float) -> float:
    """Right-hand side of the budget row of `kind` for a budget value `limit` (same form as `layer_cost`)."""
    if kind == "avg_bits":
        return limit * total_params(table)
    if kind == "size_bytes":
        return limit - extra_float_bytes(table)
    if kind == "bitops":
        return limit
    if kind == "compression":
        return float_weight_bytes(table) / limit
    raise ValueError(f"unknown budget kind {kind!r}; expected one of {BUDGET_KINDS}")


def row_to_budget(table: SensitivityTable, kind: str, row_value: float) -> float:
    """Inverse of `row_capacity`: the budget quantity (avg bits, bytes, BitOps, ratio) of a row sum."""
    if kind == "avg_bits":
        return row_value / total_params(table)
    if kind == "size_bytes":
        return row_value + extra_float_bytes(table)
    if kind == "bitops":
        return row_value
    if kind == "compression":
        return float("inf") if row_value <= 0 else float_weight_bytes(table) / row_value
    raise ValueError(f"unknown budget kind {kind!r}; expected one of {BUDGET_KINDS}")


@dataclass(frozen=True)
class Totals:
    """What an assignment costs, in the units a `Budget` uses."""

    size_bytes: int
    bitops: int
    avg_bits: float
    compression: float

    def of(self, kind: str) -> float:
        return getattr(self, kind)


def totals(table: SensitivityTable, assignment: Mapping[str, tuple[int, int | None]]) -> Totals:
    """Exact totals of `assignment` (name -> (w_bits, a_bits)); integers where the quantity is one."""
    packed = sum(table.layer_bytes(n, w) for n, (w, _) in assignment.items())
    ops = sum(table.layers[n]["macs"] * w * activation_width(a) for n, (w, a) in assignment.items())
    params = sum(table.layers[n]["params"] for n in assignment)
    weighted = sum(table.layers[n]["params"] * w for n, (w, _) in assignment.items())
    fp32 = sum(table.float_layer_bytes(n) for n in assignment)
    return Totals(
        size_bytes=packed + extra_float_bytes(table),
        bitops=ops,
        avg_bits=weighted / params if params else 0.0,
        compression=fp32 / packed if packed else float("inf"),
    )


def objective(
    table: SensitivityTable, assignment: Mapping[str, tuple[int, int | None]], alpha: float, mixed: bool
) -> float:
    """sum S_w(l, w_l) (+ alpha * S_a(l, a_l) when activations are allocated too)."""
    value = 0.0
    for name, (w, a) in assignment.items():
        value += table.w(name, w)
        if mixed:
            value += alpha * table.a(name, a)
    return value
