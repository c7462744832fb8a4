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
    if torch.compiler.is_exporting():  # ONNX has no operator for torch's bit shifts: same codes by arithmetic
        return _unpack_arithmetic(packed, bits, numel)
    blocks = math.ceil(numel / 8)
    padded = torch.zeros(blocks * bits, dtype=torch.int64, device=packed.device)
    padded[:expected] = packed.to(torch.int64)
    words = (padded.view(blocks, bits) << _BYTE_SHIFTS[:bits].to(packed.device)).sum(dim=1)
    codes = (words.unsqueeze(1) >> _SHIFTS[bits].to(packed.device)) & ((1 << bits) - 1)
    return codes.reshape(-1)[:numel].to(torch.uint8)


_POWERS_OF_TWO = torch.tensor([1 << i for i in range(8)], dtype=torch.int32)


def _unpack_arithmetic(packed: torch.Tensor, bits: int, numel: int) -> torch.Tensor:
    """`unpack` with integer multiply, floor-divide and remainder only (what ONNX export can express).

    Code j of a block of eight starts at bit j*b of the block's b bytes; b <= 8, so it lies in the
    16-bit window of byte j*b // 8 and the next one (a spare zero byte closes each block)."""
    blocks = math.ceil(numel / 8)
    padded = torch.zeros(blocks * bits, dtype=torch.int32, device=packed.device)
    padded[: packed.numel()] = packed.to(torch.int32)
    rows = torch.cat([padded.view(blocks, bits), padded.new_zeros(blocks, 1)], dim=1)
    offset = torch.arange(8, device=packed.device) * bits
    low, scale = offset // 8, _POWERS_OF_TWO.to(packed.device)[offset % 8]
    window = rows[:, low] + rows[:, low + 1] * 256
    return ((window // scale) % (1 << bits)).reshape(-1)[:numel].to(torch.uint8)
