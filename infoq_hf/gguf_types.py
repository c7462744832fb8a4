"""llama.cpp's tensor types as the allocation and the GGUF export see them: block sizes, true bits per
weight (scales included), llama.cpp's own fallbacks for rows a block does not divide, and which of them
hold our packed codes exactly.

No dependency on llama.cpp or the `gguf` package: the numbers are the formats' own (ggml's
`type_traits`: weights per block, bytes per block), the same as `gguf.GGML_QUANT_SIZES` (a test checks).

Exact containers. A packed layer stores w = (c - z) * s with one scale per run of g weights along a row;
when 32 divides g (or the row, for one scale per row), every block of 32 of a llama.cpp "legacy" type sits
inside one of our groups, so re-blocking the codes is lossless but for writing s in float16:
  symmetric, b <= 4  -> Q4_0 (q - 8 in [-8, 7])        symmetric, b = 5 -> Q5_0 (q - 16)
  symmetric, b <= 8  -> Q8_0 (int8)                    asymmetric, b <= 4 -> Q4_1 (d * q + m, m = -z s)
  asymmetric, b = 5  -> Q5_1                           asymmetric, b = 6, 7 -> Q8_0 (c - z fits int8)
Asymmetric 8-bit codes span 255 steps around any zero point and do not fit int8. The K-quants (Q2_K ...
Q6_K) put a second, 4/6/8-bit scale level under one float16 per 256 weights, which our float32 group
scales are not: a layer written in them is requantized from its dequantized weight by llama.cpp.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class GGMLType:
    name: str
    id: int  # ggml_type / gguf.GGMLQuantizationType value
    block: int  # weights per block
    block_bytes: int

    @property
    def bits_per_weight(self) -> float:
        return self.block_bytes * 8 / self.block


GGML_TYPES = {
    t.name: t
    for t in (
        GGMLType("F32", 0, 1, 4),
        GGMLType("F16", 1, 1, 2),
        GGMLType("BF16", 30, 1, 2),
        GGMLType("Q4_0", 2, 32, 18),
        GGMLType("Q4_1", 3, 32, 20),
        GGMLType("Q5_0", 6, 32, 22),
        GGMLType("Q5_1", 7, 32, 24),
        GGMLType("Q8_0", 8, 32, 34),
        GGMLType("Q2_K", 10, 256, 84),
        GGMLType("Q3_K", 11, 256, 110),
        GGMLType("Q4_K", 12, 256, 144),
        GGMLType("Q5_K", 13, 256, 176),
        GGMLType("Q6_K", 14, 256, 210),
        GGMLType("IQ4_NL", 20, 32, 18),
        GGMLType("IQ4_XS", 23, 256, 136),
    )
}

# llama.cpp's `tensor_type_fallback` (src/llama-quant.cpp): the type a tensor gets when its row length is
# not a multiple of the requested type's block; F16 when the fallback's block does not divide it either.
FALLBACKS = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0", "IQ4_XS": "IQ4_NL"}

# The K-quant (or 8-bit) type llama.cpp's presets use for a width; its fallback applies per row length.
WIDTH_TYPES = {2: "Q2_K", 3: "Q3_K", 4: "Q4_K", 5: "Q5_K", 6: "Q6_K", 7: "Q8_0", 8: "Q8_0"}


def ggml_type(name: str) -> GGMLType:
    """The type called `name` (e.g. "Q4_0"); a clear error for one this module does not know."""
    try:
        return GGML_TYPES[name.upper()]
    except KeyError:
        raise ValueError(
            f"unknown or unsupported llama.cpp tensor type {name!r}; use one of {', '.join(GGML_TYPES)}"
        ) from None


def fallback_type(name: str, row_length: int) -> str:
    """The type llama.cpp writes for a tensor requested as `name` whose rows hold `row_length` weights."""
    t = ggml_type(name)
    if row_length % t.block == 0:
        return t.name
    chosen = FALLBACKS.get(t.name, t.name)
    return chosen if row_length % GGML_TYPES[chosen].block == 0 else "F16"


def tensor_nbytes(name: str, shape) -> int:
    """Bytes of a tensor of `shape` ([rows, row_length], torch order) stored as type `name`."""
    t = ggml_type(name)
    numel = math.prod(int(d) for d in shape)
    if int(shape[-1]) % t.block:
        raise ValueError(f"rows of {int(shape[-1])} weights are not whole {t.name} blocks of {t.block}")
    return numel // t.block * t.block_bytes


def exact_type(bits: int, symmetric: bool, group_size: int | None, row_length: int) -> str | None:
    """The 32-block llama.cpp type that holds a packed layer's codes exactly (see the module doc), or None:
    no block of 32 fits inside one of its groups, or the width has no such container."""
    group = row_length if group_size is None else group_size
    if row_length % 32 or group % 32:
        return None
    if symmetric:
        return "Q4_0" if bits <= 4 else "Q5_0" if bits == 5 else "Q8_0" if bits <= 8 else None
    return "Q4_1" if bits <= 4 else "Q5_1" if bits == 5 else "Q8_0" if bits <= 7 else None


def width_type(bits: int, row_length: int) -> str:
    """The llama.cpp type a GGUF-targeted allocation gives a `bits`-wide layer with rows of `row_length`:
    the presets' type for that width (`WIDTH_TYPES`) after llama.cpp's own fallback."""
    if bits not in WIDTH_TYPES:
        raise ValueError(f"no llama.cpp type for {bits}-bit weights; candidate widths are {sorted(WIDTH_TYPES)}")
    return fallback_type(WIDTH_TYPES[bits], row_length)


def width_candidates(widths, shape) -> dict[int, tuple[str, float]]:
    """For a tensor of `shape` ([rows, row_length]): each candidate width -> (its llama.cpp type, that type's
    true bits per weight), so a GGUF-targeted budget counts the file's real bytes. Widths whose fallback
    lands on the same type as a smaller width are dropped (they would cost the same bytes for the same grid)."""
    out: dict[int, tuple[str, float]] = {}
    seen = set()
    for bits in sorted(int(b) for b in widths):
        name = width_type(bits, int(shape[-1]))
        if name not in seen:
            seen.add(name)
            out[bits] = (name, GGML_TYPES[name].bits_per_weight)
    return out


def layer_type(bits: int, symmetric: bool, group_size: int | None, shape) -> str:
    """The type the GGUF export gives a packed layer by default: its exact container, else llama.cpp's
    type for its width (`width_type`), requantized."""
    row = int(shape[-1])
    return exact_type(bits, symmetric, group_size, row) or width_type(bits, row)


def gguf_weight_bytes(shapes, bits, symmetric: bool, group_size: int | None) -> int:
    """Bytes the packed layers take in the GGUF file (scales included): `shapes` {layer: [rows, row_length]},
    `bits` {layer: width}; what the export writes for them by default (`layer_type`)."""
    return sum(tensor_nbytes(layer_type(bits[n], symmetric, group_size, shapes[n]), shapes[n]) for n in bits)


__all__ = [
    "FALLBACKS",
    "GGML_TYPES",
    "GGMLType",
    "WIDTH_TYPES",
    "exact_type",
    "fallback_type",
    "ggml_type",
    "gguf_weight_bytes",
    "layer_type",
    "tensor_nbytes",
    "width_candidates",
    "width_type",
]
