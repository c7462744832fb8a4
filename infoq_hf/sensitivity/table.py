"""`SensitivityTable`: per-layer, per-bit-width scores, plus what allocation needs to cost a layer.

JSON format (version 1):
    {"format": 1, "method": "infoq", "bits": [2, 3, 4, 8],
     "layers": {NAME: {"params": int, "macs": int, "shape": [..], "kind": "linear"|"conv2d",
                       "w": {"2": float, ...}, "a": {"2": float, ...},
                       "alpha": float, "t2": {"2": float, ...}}},   (alpha/t2: calibrated InfoQ, size_only, llamacpp)
     "meta": {"group_size": int|null, "conv_group_size": int|null, "symmetric": bool,
              "float_bytes": int, ...model/calibration identity, seed...}}
Lower scores mean less sensitive. `a` is present only where activations were scored. A table
rescaled for GPTQ packing (`rounding_costs.with_gptq_costs`) also holds "gptq_error_ratio" and the
RTN values ("t2_rtn" or "w_rtn") per layer, and `meta.costs_rounding`.
`meta.float_bytes` is what the model stores besides the quantizable layers' weights
(embeddings, norms, biases, skipped layers), so allocation can budget the whole model size.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from ..quant.modules import packed_weight_bytes
from ..quant.scheme import PackingScheme

FORMAT_VERSION = 1


# Per-layer values keyed by bit-width: scores (w, a), InfoQ's relative weight errors (t2) and, for
# GPTQ-aware costs (`rounding_costs`), the RTN originals and the GPTQ/RTN output-error ratios.
BIT_KEYED = ("w", "a", "t2", "t2_rtn", "w_rtn", "gptq_error_ratio")
WEIGHT_BIT_KEYED = tuple(k for k in BIT_KEYED if k != "a")  # keyed by the weight width


class SensitivityTable:
    """Scores S_w(l, b) (and optionally S_a(l, b)) with layer sizes and MACs."""

    def __init__(self, method: str, bits, layers: Mapping[str, Mapping], meta: Mapping | None = None):
        self.method = str(method)
        self.bits = sorted(int(b) for b in bits)
        self.layers: dict[str, dict] = {}
        for name, info in layers.items():
            entry = dict(info)
            entry["w"] = {int(b): float(s) for b, s in info.get("w", {}).items()}
            for key in BIT_KEYED[1:]:
                if info.get(key) is not None:
                    entry[key] = {int(b): float(s) for b, s in info[key].items()}
            entry["params"] = int(entry.get("params", 0))
            entry["macs"] = int(entry.get("macs", 0))
            if "shape" in entry:
                entry["shape"] = [int(d) for d in entry["shape"]]
            self.layers[str(name)] = entry
        self.meta = dict(meta or {})

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.layers)

    def __repr__(self) -> str:
        return f"SensitivityTable(method={self.method!r}, {len(self)} layers, bits={self.bits})"

    def w(self, name: str, bits: int) -> float:
        return self.layers[name]["w"][bits]

    def a(self, name: str, bits: int) -> float | None:
        scores = self.layers[name].get("a")
        return None if scores is None else scores[bits]

    def restricted(self, bits) -> SensitivityTable:
        """This table with only the weight widths `bits`, each one the table has scored (the table itself
        when they are all of them)."""
        bits = sorted({int(b) for b in bits})
        missing = [b for b in bits if b not in self.bits]
        if missing:
            raise ValueError(
                f"the sensitivity table scores widths {self.bits}, not {missing}: search again with these "
                "widths, or choose among the table's"
            )
        if bits == self.bits:
            return self
        layers = {}
        for name, info in self.layers.items():
            entry = dict(info)
            for key in WEIGHT_BIT_KEYED:
                if entry.get(key) is not None:
                    entry[key] = {b: v for b, v in entry[key].items() if b in bits}
            layers[name] = entry
        return SensitivityTable(self.method, bits, layers, self.meta)

    @property
    def scheme(self) -> PackingScheme:
        """The packing scheme the layers were scored with and are budgeted with (its fields in `meta`)."""
        return PackingScheme.from_dict({k: v for k, v in self.meta.items() if k != "rounding"})

    @property
    def has_activation_scores(self) -> bool:
        return any(info.get("a") for info in self.layers.values())

    def layer_bytes(self, name: str, bits: int) -> int:
        """Packed bytes of layer `name` at `bits` (codes + scales + zero points), as stored."""
        info = self.layers[name]
        shape = info.get("shape") or [info["params"], 1]
        scheme = self.scheme
        return packed_weight_bytes(shape, bits, scheme.group_for(info.get("kind", "linear")), scheme.symmetric)

    def float_layer_bytes(self, name: str, float_bits: int = 32) -> float:
        return self.layers[name]["params"] * float_bits / 8

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        layers = {}
        for name, info in self.layers.items():
            entry = {k: v for k, v in info.items() if k not in BIT_KEYED}
            for key in BIT_KEYED:
                if info.get(key) is not None:
                    entry[key] = {str(b): s for b, s in info[key].items()}
            layers[name] = entry
        return {"format": FORMAT_VERSION, "method": self.method, "bits": self.bits, "layers": layers, "meta": self.meta}

    @classmethod
    def from_dict(cls, data: Mapping) -> SensitivityTable:
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(
                f"unsupported sensitivity table format {data.get('format')!r}; this version reads {FORMAT_VERSION}"
            )
        for key in ("method", "bits", "layers"):
            if key not in data:
                raise ValueError(f"sensitivity table lacks {key!r}")
        return cls(data["method"], data["bits"], data["layers"], data.get("meta"))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1))
        tmp.replace(path)  # never leave a half-written table
        return path

    @classmethod
    def load(cls, path: str | Path) -> SensitivityTable:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def validate(self) -> None:
        """Raise if a layer lacks a score for a candidate bit-width or a score is not finite."""
        if not self.layers:
            raise ValueError("the sensitivity table has no layers")
        for name, info in self.layers.items():
            for kind in ("w", "a") if info.get("a") is not None else ("w",):
                missing = [b for b in self.bits if b not in info[kind]]
                if missing:
                    raise ValueError(
                        f"layer {name!r} has no {kind}-score for bits {missing}; re-run search with these bits"
                    )
                bad = [b for b, s in info[kind].items() if not math.isfinite(s)]
                if bad:
                    raise ValueError(f"layer {name!r} has non-finite {kind}-scores at bits {bad}")
