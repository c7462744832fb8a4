"""Exact bit packing of unsigned integer codes, for every width from 2 to 8 bits.

Layout: codes are written little-endian into one continuous bit stream (code i
occupies bits [i*b, (i+1)*b) of the stream, bit 0 of a byte being its least
significant bit). A tensor of n codes takes exactly ceil(n*b/8) bytes, so the
only waste is the unused tail of the last byte.

Eight codes of b bits fill exactly b bytes, so both directions work on blocks of
eight codes held in one int64: a handful of vectorised shifts, no per-bit loop.
"""

from __future__ import annotations

import math

import torch

from ..bitwidth import MAX_BITS, MIN_BITS, check_bits


def packed_nbytes(numel: int, bits: int) -> int:
    """Bytes taken by `numel` codes of `bits` bits."""
    return math.ceil(numel * bits / 8)


_SHIFTS = {b: torch.arange(8, dtype=torch.int64) * b for b in range(MIN_BITS, MAX_BITS + 1)}
_BYTE_SHIFTS = torch.arange(8, dtype=torch.int64) * 8


def pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack unsigned codes (any shape, values in [0, 2**bits)) into a flat uint8 tensor."""
    check_bits(bits)
    flat = codes.reshape(-1).to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 1 << bits):
        raise ValueError(f"codes must lie in [0, {(1 << bits) - 1}] to pack at {bits} bits")
    n = flat.numel()
    blocks = math.ceil(n / 8)
    padded = torch.zeros(blocks * 8, dtype=torch.int64, device=flat.device)
    padded[:n] = flat
    # Eight b-bit codes -> one (8*b)-bit word -> b bytes.
    words = (padded.view(blocks, 8) << _SHIFTS[bits].to(flat.device)).sum(dim=1)
    byte_shifts = _BYTE_SHIFTS[:bits].to(flat.device)
    out = ((words.unsqueeze(1) >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1)
    return out[: packed_nbytes(n, bits)].contiguous()


def unpack(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """Inverse of `pack`: return `numel` codes as a flat uint8 tensor."""
    check_bits(bits)
    expected = packed_nbytes(numel, bits)
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != expected:
        raise ValueError(
            f"packed buffer has {packed.numel()} {packed.dtype} values, expected {expected} uint8 "
            f"for {numel} codes at {bits} bits"
        )
    blocks = math.ceil(numel / 8)
    padded = torch.zeros(blocks * bits, dtype=torch.int64, device=packed.device)
    padded[:expected] = packed.to(torch.int64)
    words = (padded.view(blocks, bits) << _BYTE_SHIFTS[:bits].to(packed.device)).sum(dim=1)
    codes = (words.unsqueeze(1) >> _SHIFTS[bits].to(packed.device)) & ((1 << bits) - 1)
    return codes.reshape(-1)[:numel].to(torch.uint8)
