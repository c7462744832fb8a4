"""The allocation problem as the caller states it: layers, candidate bits, budget, pins, bounds, ties.

`resolve_spec` turns keyword arguments (pins, min/max, ties, candidate bits) into an `AllocationSpec`,
raising a ValueError on anything inconsistent; `choices` lists the (w_bits, a_bits) each layer may take
under it. The ILP (`ilp.build`) is written from this spec, and the verifier (`verify`) re-checks a
solution against the spec alone, never the ILP, so neither trusts the other.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from ..policy import Budget, LayerBits
from ..quant.packing import check_bits
from ..sensitivity.table import SensitivityTable
from . import costs

Choice = tuple[int, "int | None"]  # (w_bits, a_bits); a_bits None = activations stay float


@dataclass(frozen=True)
class AllocationSpec:
    """What a valid allocation must satisfy, in the caller's terms (no ILP details)."""

    layers: tuple[str, ...]
    w_candidates: tuple[int, ...]
    a_candidates: tuple  # act_bits when `mixed`, else the single fixed width (None = float)
    mixed: bool  # activation bits are chosen too (W/A mixed precision)
    alpha: float
    budget: Budget
    pins_w: Mapping[str, int]
    pins_a: Mapping[str, int]
    min_bits: Mapping[str, int]
    max_bits: Mapping[str, int]
    w_ties: tuple[tuple[str, ...], ...]  # disjoint groups (overlapping inputs merged)
    a_ties: tuple[tuple[str, ...], ...]

    def w_options(self, name: str) -> list[int]:
        """Weight bits layer `name` may take on its own (ties aside)."""
        if name in self.pins_w:
            return [self.pins_w[name]]
        lo, hi = self.min_bits.get(name, 0), self.max_bits.get(name, 99)
        return [b for b in self.w_candidates if lo <= b <= hi]

    def a_options(self, name: str) -> list:
        if name in self.pins_a:
            return [self.pins_a[name]]
        return list(self.a_candidates)


# ---------------------------------------------------------------------------------------------- resolution


def _check_names(table: SensitivityTable, names: Iterable[str], what: str) -> None:
    for name in names:
        if name not in table.layers:
            close = difflib.get_close_matches(str(name), list(table.layers), n=3)
            hint = f"; closest table layers: {close}" if close else ""
            raise ValueError(f"{what} names layer {name!r}, which the sensitivity table lacks{hint}")


def _bits_subset(value, table: SensitivityTable, what: str) -> tuple[int, ...]:
    chosen = sorted({int(check_bits(b, what)) for b in value})
    if not chosen:
        raise ValueError(f"{what} is empty; give at least one bit-width from the table's {table.bits}")
    missing = [b for b in chosen if b not in table.bits]
    if missing:
        raise ValueError(
            f"{what} {missing} are not scored in the table (its bits are {table.bits}); "
            f"re-run search with these bits or pick from {table.bits}"
        )
    return tuple(chosen)


def _per_layer_bound(value, table: SensitivityTable, what: str) -> dict[str, int]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        _check_names(table, value, what)
        return {str(k): check_bits(v, f"{what}[{k!r}]") for k, v in value.items()}
    bits = check_bits(value, what)
    return {name: bits for name in table.layers}


def _merge_groups(groups, table: SensitivityTable, what: str) -> tuple[tuple[str, ...], ...]:
    """Union of overlapping groups (a layer in two groups ties them all), in table order."""
    if groups is None:
        return ()
    if isinstance(groups, (str, bytes)) or not all(isinstance(g, Iterable) and not isinstance(g, str) for g in groups):
        raise ValueError(f"{what} must be a list of groups, each a list of layer names, got {groups!r}")
    parent: dict[str, str] = {}

    def root(n: str) -> str:
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    for group in groups:
        group = [str(n) for n in group]
        _check_names(table, group, what)
        for n in group:
            parent.setdefault(n, n)
        for n in group[1:]:
            parent[root(n)] = root(group[0])
    merged: dict[str, list[str]] = {}
    for name in table.layers:  # table order keeps the model deterministic
        if name in parent:
            merged.setdefault(root(name), []).append(name)
    return tuple(tuple(g) for g in merged.values() if len(g) > 1)


# ---------------------------------------------------------------------------------------------- pins

# pin_first_last="auto": pin an end layer holding at most this share of the weights.
AUTO_PIN_MAX_SHARE = 0.05


def _parse_pin(name: str, value, mixed: bool, fixed_a) -> tuple[int, int | None, bool]:
    """-> (w_bits, a_bits, a_given)."""
    if isinstance(value, LayerBits):
        w, a, a_given = value.w_bits, value.a_bits, value.a_bits is not None
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        w, a, a_given = value[0], value[1], True
    elif isinstance(value, int) and not isinstance(value, bool):
        w, a, a_given = value, None, False
    else:
        raise ValueError(f"pin[{name!r}] must be an int (weight bits) or a (w_bits, a_bits) pair, got {value!r}")
    w = check_bits(w, f"pin[{name!r}]")
    if a_given and a is not None:
        a = check_bits(a, f"pin[{name!r}] activations")
    if a_given and not mixed and a != fixed_a:
        raise ValueError(
            f"pin[{name!r}] sets activation bits {a}, but activations are not allocated "
            f"(act_bits=None; every layer uses fixed_a_bits={fixed_a}); pass act_bits=[...] for W/A mixed precision"
        )
    return w, a, a_given and mixed


def _end_pins(
    table: SensitivityTable, pin_first_last, first_last_bits, w_candidates, a_candidates, mixed: bool
) -> tuple[dict[str, int], dict[str, int]]:
    """The first/last layer pins (HAWQ/LIMPQ convention for CNNs) as (pins_w, pins_a); explicit pins override them.

    "auto" pins them on CNNs only where they are small: a large pinned layer (MobileNetV2's
    classifier holds 37% of its weights) forces 2-bit layers elsewhere and can lose to uniform."""
    layers = tuple(table.layers)
    pins_w: dict[str, int] = {}
    pins_a: dict[str, int] = {}
    ends = list(dict.fromkeys((layers[0], layers[-1])))
    if pin_first_last == "auto":
        total = costs.total_params(table) or 1
        ends = [n for n in ends if table.layers[n]["params"] <= AUTO_PIN_MAX_SHARE * total]
        pin_first_last = table.layers[layers[0]].get("kind") == "conv2d" and bool(ends)
    elif not isinstance(pin_first_last, bool):
        raise ValueError(f"pin_first_last must be True, False or 'auto', got {pin_first_last!r}")
    if pin_first_last:
        if first_last_bits is None:
            fw = 8 if 8 in w_candidates else max(w_candidates)
            fa = (8 if 8 in a_candidates else max(a_candidates)) if mixed else None
        else:
            fw, fa, a_given = _parse_pin("first/last", first_last_bits, mixed, a_candidates[0])
            if mixed and not a_given:
                fa = 8 if 8 in a_candidates else max(a_candidates)
        for name in ends:
            pins_w[name] = fw
            if mixed:
                pins_a[name] = fa
    return pins_w, pins_a


def resolve_spec(
    table: SensitivityTable,
    budget,
    *,
    alpha: float = 1.0,
    bits=None,
    act_bits=None,
    fixed_a_bits=None,
    pin=None,
    pin_first_last="auto",
    first_last_bits=None,
    min_bits=None,
    max_bits=None,
    tie=None,
    tie_activations=None,
) -> AllocationSpec:
    """Check every argument against the table and each other; return the resolved constraints."""
    if not isinstance(table, SensitivityTable):
        raise ValueError(f"allocate needs a SensitivityTable, got {type(table).__name__}")
    table.validate()
    if isinstance(budget, Mapping):
        budget = Budget.from_dict(budget)
    if not isinstance(budget, Budget):
        raise ValueError(f"budget must be a Budget (or its dict form), got {budget!r}")
    if not (isinstance(alpha, (int, float)) and alpha >= 0 and alpha == alpha and alpha != float("inf")):
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha!r}")
    if budget.bitops is not None and not any(info["macs"] for info in table.layers.values()):
        raise ValueError(
            "a bitops budget needs MAC counts, but every layer of the table has macs=0; "
            "re-run search with example inputs that count MACs"
        )
    if budget.avg_bits is not None and costs.total_params(table) == 0:
        raise ValueError("an avg_bits budget needs parameter counts, but every layer of the table has params=0")

    w_candidates = _bits_subset(table.bits if bits is None else bits, table, "bits")
    mixed = act_bits is not None
    if mixed:
        if fixed_a_bits is not None:
            raise ValueError(
                "give either act_bits (allocate activation bits) or fixed_a_bits (one width for all), not both"
            )
        lacking = [n for n, info in table.layers.items() if info.get("a") is None]
        if lacking:
            raise ValueError(
                f"act_bits needs activation scores, but {len(lacking)} layer(s) have none "
                f"(e.g. {lacking[:3]}); re-run search with activation scoring, or drop act_bits"
            )
        a_candidates = _bits_subset(act_bits, table, "act_bits")
    else:
        if fixed_a_bits is not None:
            fixed_a_bits = check_bits(fixed_a_bits, "fixed_a_bits")
        a_candidates = (fixed_a_bits,)

    layers = tuple(table.layers)
    pins_w, pins_a = _end_pins(table, pin_first_last, first_last_bits, w_candidates, a_candidates, mixed)

    if pin is not None:
        if not isinstance(pin, Mapping):
            raise ValueError(f"pin must be a dict layer name -> bits or (w_bits, a_bits), got {type(pin).__name__}")
        _check_names(table, pin, "pin")
        for name, value in pin.items():
            w, a, a_given = _parse_pin(name, value, mixed, a_candidates[0])
            pins_w[name] = w
            if a_given:
                pins_a[name] = a
            else:
                pins_a.pop(name, None)  # an explicit weight-only pin frees the first/last activation pin

    for name, w in pins_w.items():
        if w not in w_candidates:
            raise ValueError(
                f"layer {name!r} is pinned to {w} weight bits, outside the candidate bits {list(w_candidates)}"
            )
    for name, a in pins_a.items():
        if a not in a_candidates:
            raise ValueError(f"layer {name!r} is pinned to {a} activation bits, outside act_bits {list(a_candidates)}")

    lo = _per_layer_bound(min_bits, table, "min_bits")
    hi = _per_layer_bound(max_bits, table, "max_bits")
    for name in layers:
        if name in lo and name in hi and lo[name] > hi[name]:
            raise ValueError(f"layer {name!r}: min_bits {lo[name]} > max_bits {hi[name]}")
        if name in pins_w and not lo.get(name, 0) <= pins_w[name] <= hi.get(name, 99):
            raise ValueError(
                f"layer {name!r} is pinned to {pins_w[name]} bits, outside its bounds "
                f"min_bits={lo.get(name)} max_bits={hi.get(name)}"
                + (
                    "; pass pin_first_last=False to unpin the first/last layers"
                    if pin is None or name not in pin
                    else ""
                )
            )

    spec = AllocationSpec(
        layers=layers,
        w_candidates=w_candidates,
        a_candidates=a_candidates,
        mixed=mixed,
        alpha=float(alpha),
        budget=budget,
        pins_w=pins_w,
        pins_a=pins_a,
        min_bits=lo,
        max_bits=hi,
        w_ties=_merge_groups(tie, table, "tie"),
        a_ties=_merge_groups(tie_activations, table, "tie_activations"),
    )
    for name in layers:
        if not spec.w_options(name):
            raise ValueError(
                f"layer {name!r} has no admissible weight bits: candidates {list(w_candidates)}, "
                f"min_bits={lo.get(name)}, max_bits={hi.get(name)}"
            )
    return spec


# ---------------------------------------------------------------------------------------------- choices


def _tied_options(groups, options_of) -> dict[str, list]:
    """Restrict each tied layer to the bits every member of its group admits; raise when none is left."""
    restricted = {}
    for group in groups:
        common = set(options_of(group[0]))
        for name in group[1:]:
            common &= set(options_of(name))
        if not common:
            detail = ", ".join(f"{n}: {options_of(n)}" for n in group)
            raise ValueError(f"tied layers cannot share bits: their admissible bits have nothing in common ({detail})")
        for name in group:
            restricted[name] = [b for b in options_of(name) if b in common]
    return restricted


def choices(spec: AllocationSpec) -> dict[str, list[Choice]]:
    """Admissible (w_bits, a_bits) per layer, after pins, bounds and ties."""
    w_opts = {n: spec.w_options(n) for n in spec.layers}
    w_opts.update(_tied_options(spec.w_ties, w_opts.__getitem__))
    a_opts = {n: spec.a_options(n) for n in spec.layers}
    if spec.mixed:
        a_opts.update(_tied_options(spec.a_ties, a_opts.__getitem__))
    return {n: list(itertools.product(w_opts[n], a_opts[n])) for n in spec.layers}
