"""Per-layer bit-widths (`BitPolicy`), budgets (`Budget`), and layer-name matching across model classes.

JSON format of a policy (stable, versioned by the package):
    {NAME: {"w_bits": int, "a_bits": int | null}, ...}
A NAME is a module path, matched by the rule of `infoq_hf.names`, in order:
  1. the exact path;
  2. a dot-boundary suffix in either direction, so a policy written for
     `LlamaForCausalLM` (`model.layers.0.mlp.up_proj`) applies to `LlamaModel`
     (`layers.0.mlp.up_proj`), and a timm model's policy (`layer1.0.conv1`)
     applies inside transformers' TimmWrapper (`timm_model.layer1.0.conv1`);
     the match must be unique;
  3. `re:<regex>` keys, full-matched against every module path not matched above.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from .bitwidth import check_bits
from .names import compile_regex, is_regex, matching_names


@dataclass(frozen=True)
class LayerBits:
    """Bit-widths of one layer; `a_bits=None` keeps its input activations in float."""

    w_bits: int
    a_bits: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "w_bits", check_bits(self.w_bits))  # numpy ints become ints
        if self.a_bits is not None:
            object.__setattr__(self, "a_bits", check_bits(self.a_bits))

    def to_dict(self) -> dict:
        return {"w_bits": self.w_bits, "a_bits": self.a_bits}


def _as_layer_bits(name: str, value) -> LayerBits:
    try:
        if isinstance(value, LayerBits):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return LayerBits(value)
        if isinstance(value, Mapping):
            unknown = set(value) - {"w_bits", "a_bits"}
            if unknown:
                raise ValueError(f"unknown keys {sorted(unknown)}; expected 'w_bits' and optional 'a_bits'")
            return LayerBits(value["w_bits"], value.get("a_bits"))
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"policy entry {name!r}: {e}") from None
    raise ValueError(f"policy entry {name!r}: expected {{'w_bits': int, 'a_bits': int|null}} or an int, got {value!r}")


class BitPolicy(Mapping):
    """An immutable mapping layer name -> `LayerBits`.

    `report`: how the policy was found (an `AllocationReport` when `allocate` made it; None when the
    policy was given or read from a file). `scheme`: the `PackingScheme` its bits were budgeted with
    (its table's), which `quantize_model` then packs with. Neither takes part in equality or
    serialisation."""

    def __init__(self, layers: Mapping | None = None, *, report=None, scheme=None):
        self._layers = {str(k): _as_layer_bits(str(k), v) for k, v in (layers or {}).items()}
        for key in self._layers:
            if is_regex(key):
                compile_regex(key)
        self._report = report
        self._scheme = scheme

    @property
    def report(self):
        return self._report

    @property
    def scheme(self):
        return self._scheme

    def __getitem__(self, key: str) -> LayerBits:
        return self._layers[key]

    def __iter__(self):
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    def __eq__(self, other) -> bool:
        return isinstance(other, BitPolicy) and self._layers == other._layers

    def __repr__(self) -> str:
        return f"BitPolicy({len(self)} layers, avg w_bits {self.mean_w_bits():.2f})"

    def mean_w_bits(self) -> float:
        return sum(v.w_bits for v in self._layers.values()) / max(len(self._layers), 1)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        return {k: v.to_dict() for k, v in self._layers.items()}

    @classmethod
    def from_dict(cls, data: Mapping) -> BitPolicy:
        if not isinstance(data, Mapping):
            raise ValueError(f"a policy must be a mapping NAME -> {{'w_bits', 'a_bits'}}, got {type(data).__name__}")
        return cls(data)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> BitPolicy:
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text()
        return cls.from_dict(json.loads(text))

    # ------------------------------------------------------------------ name matching
    def resolve(self, module_names: Iterable[str]) -> dict[str, LayerBits]:
        """Map this policy onto a model's module paths. Raises on unmatched or ambiguous names."""
        names = list(module_names)
        resolved: dict[str, LayerBits] = {}
        owner: dict[str, str] = {}
        regexes = []
        for key, bits in self._layers.items():
            if is_regex(key):
                regexes.append((key, compile_regex(key), bits))
                continue
            target = _suffix_match(key, names)
            if target in owner:
                raise ValueError(f"policy entries {owner[target]!r} and {key!r} both name layer {target!r}")
            owner[target] = key
            resolved[target] = bits
        for key, pattern, bits in regexes:
            hits = [n for n in names if n not in owner and pattern.fullmatch(n)]
            if not hits:
                raise ValueError(f"policy regex {key!r} matches no quantizable layer of the model")
            for n in hits:
                resolved.setdefault(n, bits)
        return resolved


def _suffix_match(key: str, names: list[str]) -> str:
    hits = matching_names(key, names)
    if len(hits) == 1:
        return hits[0]
    if not hits:
        close = difflib.get_close_matches(key, names, n=3)
        hint = f" Closest layer names: {close}." if close else ""
        raise ValueError(
            f"policy names layer {key!r}, which the model lacks (or which is not a quantizable "
            f"Linear/Conv2d).{hint} Fix the name, or use a 're:<regex>' key."
        )
    raise ValueError(f"policy name {key!r} is ambiguous: it matches {hits[:5]}; write a longer path")


@dataclass(frozen=True)
class Budget:
    """Resource limits for bit allocation; any combination may be set.

    avg_bits: parameter-weighted mean weight bits over the quantized layers.
    size_bytes: the whole model as stored (packed weights, scales, float leftovers).
    bitops: sum over layers of MACs x w_bits x a_bits (float activations count as 32 bits).
    compression: fp32 bytes of the quantized layers' weights over their packed bytes (>= 1).
    """

    avg_bits: float | None = None
    size_bytes: float | None = None
    bitops: float | None = None
    compression: float | None = None

    def __post_init__(self):
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        if all(v is None for v in values.values()):
            raise ValueError("a Budget needs at least one of avg_bits, size_bytes, bitops, compression")
        for k, v in values.items():
            if v is not None and not (isinstance(v, (int, float)) and v > 0 and v == v and v != float("inf")):
                raise ValueError(f"Budget.{k} must be a positive finite number, got {v!r}")
        if self.compression is not None and self.compression < 1:
            raise ValueError(
                f"Budget.compression is fp32 bytes / packed bytes and must be >= 1, got {self.compression}"
            )

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_dict(cls, data: Mapping) -> Budget:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown budget keys {sorted(unknown)}; use avg_bits, size_bytes, bitops, compression")
        return cls(**data)
