"""`PackingScheme`: how every layer of a model is packed, in one value.

The search scores layers with it, the allocation budgets bytes with it, `quantize_model` packs
with it and the checkpoint records it, so these can never disagree silently. A table keeps it
in its meta, and a policy that `allocate` returns carries its table's scheme: `quantize_model`
packs with that scheme and refuses a different one (the budget would no longer hold).

The public functions keep taking the fields as shorthand (`group_size=64, symmetric=True`);
`resolve_scheme` merges them with a passed `scheme=` or a default.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace

import torch.nn as nn

from .quantizer import WeightScheme

ROUNDINGS = ("rtn", "gptq")
FORMAT_FIELDS = ("group_size", "conv_group_size", "symmetric")  # what sets the stored codes' layout and sizes
UNSET = object()  # a shorthand argument the caller did not pass


@dataclass(frozen=True)
class PackingScheme:
    """group_size: weights per scale along a Linear's inputs (None: one scale per output channel; a
    layer whose width it does not divide gets a smaller one, `quantizer.effective_group_size`).
    conv_group_size: the same for Conv2d layers. symmetric: codes without zero points.
    clip_search: search a clipping ratio per group when rounding (widths up to 4 bits). rounding: "rtn"
    (round to nearest) or "gptq" (error-compensating, needs calibration data). These two choose the
    codes, not their layout: the stored format is the same."""

    group_size: int | None = None
    conv_group_size: int | None = None
    symmetric: bool = False
    clip_search: bool = False
    rounding: str = "rtn"

    def __post_init__(self):
        for name in ("group_size", "conv_group_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive int or None (one scale per output channel), got {value!r}")
        if self.rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {self.rounding!r}")

    def group_for(self, layer_or_kind) -> int | None:
        """The requested group size of a layer (a module, or a table's kind "linear" / "conv2d")."""
        conv = layer_or_kind == "conv2d" if isinstance(layer_or_kind, str) else isinstance(layer_or_kind, nn.Conv2d)
        return self.conv_group_size if conv else self.group_size

    def weight_scheme(self, layer_or_kind, bits: int) -> WeightScheme:
        return WeightScheme(bits, self.group_for(layer_or_kind), self.symmetric, self.clip_search)

    def same_format(self, other: PackingScheme) -> bool:
        """Whether both store the same codes layout and sizes (the rounding and clipping may differ)."""
        return all(getattr(self, f) == getattr(other, f) for f in FORMAT_FIELDS)

    def codes_settings(self) -> dict:
        """The fields besides the rounding that decide a weight's codes: the layout and the clipping."""
        return {k: getattr(self, k) for k in (*FORMAT_FIELDS, "clip_search")}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> PackingScheme:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def describe(self) -> str:
        group = "per output channel" if self.group_size is None else f"group {self.group_size}"
        return (
            f"{group}, conv {self.conv_group_size or 'per channel'}, "
            f"{'symmetric' if self.symmetric else 'asymmetric'}{', clip search' if self.clip_search else ''}, "
            f"{self.rounding}"
        )


def resolve_scheme(scheme: PackingScheme | Mapping | None, default: PackingScheme, **shorthand) -> PackingScheme:
    """`scheme` if given, else `default` with the shorthand fields the caller passed (not `UNSET`)."""
    given = {k: v for k, v in shorthand.items() if v is not UNSET}
    if scheme is not None:
        if given:
            raise ValueError(f"pass either scheme= or its fields {sorted(given)}, not both")
        return scheme if isinstance(scheme, PackingScheme) else PackingScheme.from_dict(scheme)
    return replace(default, **given)


__all__ = ["ROUNDINGS", "UNSET", "PackingScheme", "resolve_scheme"]
