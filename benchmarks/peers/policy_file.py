"""A peer's per-layer widths, read from the JSON a peer script writes (e.g. autoscheme_policy.py), for
benchmarks/compare.py to pack with our pipeline beside its own rows.

The file holds at least `layers` {layer name: weight bits} and `target_avg_bits` (the budget it was
chosen for); `model`, `avg_bits`, `autoscheme_wall_s`, `own` (the peer's own end-to-end perplexity)
and `eval_windows` are read when present. Stdlib only: the peer venvs import it too.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class PeerPolicy:
    label: str
    path: Path
    budget: float
    layers: dict[str, int]
    record: dict = field(default_factory=dict)

    def check_layers(self, names, bits) -> None:
        """Fail, naming the difference, unless the file sets every layer of `names` (and no other) to a
        width among `bits`."""
        names = list(names)
        missing = [n for n in names if n not in self.layers]
        extra = [n for n in self.layers if n not in set(names)]
        if missing or extra:
            raise ValueError(
                f"{self.path}: its layers do not match the model's quantizable layers ({len(missing)} missing, "
                f"e.g. {missing[:2]}; {len(extra)} unknown, e.g. {extra[:2]}); was it written for another model?"
            )
        off = {n: b for n, b in self.layers.items() if b not in bits}
        if off:
            raise ValueError(
                f"{self.path}: widths outside the candidates {sorted(bits)}: {dict(list(off.items())[:3])}"
            )


def windows_digest(batches: list[dict]) -> str:
    """sha256 of the token ids of `batches` (dicts with an int64 `input_ids` tensor), in order: whether a
    peer's perplexity was measured on the very windows of this run."""
    h = hashlib.sha256()
    for b in batches:
        h.update(b["input_ids"].contiguous().numpy().tobytes())
    return h.hexdigest()


def parse_spec(spec: str) -> tuple[str, Path]:
    label, sep, path = spec.partition("=")
    if not sep or not label or not path:
        raise ValueError(f"--policy-file takes NAME=PATH (e.g. autoscheme=policy.json), got {spec!r}")
    return label, Path(path)


def load_policy_file(spec: str, model_key: str | None = None) -> PeerPolicy:
    """`spec` is NAME=PATH; `model_key`, when given, must match the file's `model` if it names one."""
    label, path = parse_spec(spec)
    if not path.is_file():
        raise ValueError(f"--policy-file {spec}: no file at {path}")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not JSON ({exc})") from exc
    if not isinstance(record, dict) or not isinstance(record.get("layers"), dict) or "target_avg_bits" not in record:
        raise ValueError(
            f"{path}: needs `layers` {{name: bits}} and `target_avg_bits` (as autoscheme_policy.py writes)"
        )
    if model_key is not None and record.get("model") not in (None, model_key):
        raise ValueError(f"{path}: written for model {record['model']!r}, this run is {model_key!r}")
    layers = {}
    for name, bits in record["layers"].items():
        if isinstance(bits, bool) or not isinstance(bits, int):
            raise ValueError(f"{path}: layer {name!r} has width {bits!r}; widths are ints")
        layers[name] = bits
    return PeerPolicy(label, path, float(record["target_avg_bits"]), layers, record)
