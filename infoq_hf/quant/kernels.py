"""A fast CPU forward for packed linear layers: torch's weight-only int4 matmul.

`torch.ops.aten._weight_int4pack_mm_for_cpu(x, B, kernel_group, SZ)` computes x @ W^T with

    W[n, k] = (q[n, k] - 8) * SZ[k // kernel_group, n, 0] + SZ[k // kernel_group, n, 1]

for 4-bit q (in the blocked layout of `_convert_weight_to_int4pack_for_cpu`), kernel_group in
{32, 64, 128, 256}, N a multiple of 16, in the dtype of x (bfloat16 or float16 here: float32
inputs take `stream_kernels` instead, whose numbers are the reference's). Our weight is w = d * s with the integer
d = c - o (code minus the zero point, or minus 2^(b-1) when symmetric). Per kernel group we pick a shift t that keeps
v = d + t inside the container, [0, 16) for widths <= 4 and [0, 256) for widths 5..8, then

    widths <= 4:  w = (v - 8) * s + (8 - t) * s
    widths 5..8:  v = 16 h + l with h, l in [0, 16), so
                  w = (h - 8) * 16s + (l - 8) * s + (136 - t) * s,
                  one 4-bit matrix [h | l] of shape [N, 2K] applied to [x | x].

t is chosen as close to 8 (or 136) as the group's codes allow, so the residual zero (8 - t) * s
is 0 for widths 2, 3, 5 and 6 and small otherwise: the only rounding is that of s and of this
residual to the compute dtype, plus the kernel's own arithmetic. A kernel group must divide our
group (or the row, per channel); our scales are repeated over the kernel groups they span.

The layout keeps t minus the zero point, so the codes come back exactly (`codes_from_int4_layout`): the kernel's
blocked layout is a permutation of the [N, K] nibbles. `_int4pack_order` reads that permutation off the
kernel itself (converting the nibbles of the element indices); `_nibbles_by_blocks` undoes it with
reshapes, for the block structure torch uses today, and is used only after checking it against the
kernel once per process. A layer can then hold the layout alone.

Many input rows (prefill) take a dense matmul instead: the kernel is built for few rows and, on a CPU
with fast bf16 matmuls, is slower than dequantizing the layout and calling `F.linear`
(`DENSE_FROM_ROWS`, measured by `python -m benchmarks.kernel_dtypes`). In bfloat16 the dequantization
is a compiled one-pass rebuild (`stream_kernels`), bit-identical to the pure-PyTorch one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import stream_kernels

KERNEL_GROUPS = (256, 128, 64, 32)  # the group sizes the kernel takes, largest first
KERNEL_DTYPES = (torch.bfloat16, torch.float16)
_N_MULTIPLE = 16
_BLOCK_N = 64  # rows per block of the kernel's layout; a remainder (a multiple of 16) is one last block
# From this many input rows on, dequantizing the layout and a dense matmul beat the kernel.
DENSE_FROM_ROWS = 128


@dataclass(frozen=True)
class Int4Layout:
    """One packed linear layer's weight in the kernel's layout (a runtime copy, never saved)."""

    packed: torch.Tensor  # uint8, the kernel's blocked 4-bit layout of [N, K] or [N, 2K]
    scale_zero: torch.Tensor  # [K' / kernel_group, N, 2] in `dtype`
    kernel_group: int
    split: bool  # widths 5..8: the input is duplicated to meet the [h | l] halves
    dtype: torch.dtype
    code_offset: torch.Tensor  # int8 (int16 when split) [N, K / kernel_group]: v = codes + code_offset

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.packed, self.scale_zero, self.code_offset))


def kernel_group_for(fan_in: int, group_size: int | None) -> int | None:
    """The largest kernel group dividing our group (or the whole row when per channel), else None."""
    span = fan_in if group_size is None else group_size
    return next((g for g in KERNEL_GROUPS if span % g == 0 and fan_in % g == 0), None)


def unsupported_reason(shape: tuple[int, int], group_size: int | None) -> str | None:
    """Why a [out, in] weight cannot take the kernel (None when it can)."""
    out, fan_in = shape
    if out % _N_MULTIPLE:
        return f"output width {out} is not a multiple of {_N_MULTIPLE}"
    if kernel_group_for(fan_in, group_size) is None:
        span = "the input width" if group_size is None else f"group_size={group_size}"
        return f"none of the kernel group sizes {KERNEL_GROUPS} divides {span} (input width {fan_in})"
    return None


def build_int4_layout(
    codes: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor | None,
    bits: int,
    group_size: int | None,
    dtype: torch.dtype,
) -> Int4Layout:
    """Repack codes [N, K] (uint8), scale [N, n_groups] and zero points into the kernel's layout."""
    n, k = codes.shape
    reason = unsupported_reason((n, k), group_size)
    if reason is not None:
        raise ValueError(f"the int4 kernel cannot take this layer: {reason}")
    if dtype not in KERNEL_DTYPES:
        raise ValueError(f"the int4 kernel computes in {KERNEL_DTYPES}, not {dtype}")
    kernel_group = kernel_group_for(k, group_size)
    repeat = (k if group_size is None else group_size) // kernel_group
    s = scale.float().repeat_interleave(repeat, dim=1)  # [N, K / kernel_group]
    offset = (
        torch.full_like(s, 1 << (bits - 1))
        if zero_point is None
        else zero_point.float().repeat_interleave(repeat, dim=1)
    ).to(torch.int32)
    d = codes.to(torch.int32).reshape(n, -1, kernel_group) - offset[..., None]  # w = d * s
    split = bits > 4
    capacity, center = (256, 136) if split else (16, 8)
    # v = d + t must lie in [0, capacity): t in [-min d, capacity - 1 - max d], as near `center` as allowed.
    t = torch.minimum(torch.maximum(torch.full_like(offset, center), -d.amin(dim=-1)), capacity - 1 - d.amax(dim=-1))
    v = (d + t[..., None]).reshape(n, k)
    zeros = (center - t).float() * s
    if split:
        q = torch.cat([v >> 4, v & 15], dim=1)
        scales, zeros = torch.cat([16 * s, s], dim=1), torch.cat([torch.zeros_like(s), zeros], dim=1)
    else:
        q, scales = v, s
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q.contiguous(), 1)
    check_block_structure()
    scale_zero = torch.stack([scales.t(), zeros.t()], dim=-1).to(dtype).contiguous()
    # |t - offset| <= 15 for widths <= 4 (t - o lies in [-min c, 15 - max c]); up to 510 when split
    code_offset = (t - offset).to(torch.int16 if split else torch.int8)
    return Int4Layout(packed, scale_zero, kernel_group, split, dtype, code_offset)


def _int4pack_order(n: int, k: int) -> torch.Tensor:
    """For the kernel layout of an [n, k] nibble matrix: which flat element each stored nibble
    (low nibble of byte 0, high nibble of byte 0, low of byte 1, ...) holds."""
    index = torch.arange(n * k, dtype=torch.int64)
    order = torch.zeros(n * k, dtype=torch.int64)
    for bit in range(0, max(1, (n * k - 1).bit_length()), 4):
        digits = ((index >> bit) & 15).to(torch.int32).reshape(n, k)
        stored = torch.ops.aten._convert_weight_to_int4pack_for_cpu(digits, 1)
        order |= torch.stack([stored & 15, stored >> 4], dim=-1).flatten().to(torch.int64) << bit
    return order


def _nibbles_by_order(packed: torch.Tensor, n: int, width: int) -> torch.Tensor:
    """The [n, width] nibble matrix (uint8) of a kernel layout, placed by the permutation read off the kernel."""
    nibbles = torch.stack([packed & 15, packed >> 4], dim=-1).flatten()
    q = torch.empty(n * width, dtype=torch.uint8)
    q[_int4pack_order(n, width)] = nibbles
    return q.reshape(n, width)


def _nibbles_by_blocks(packed: torch.Tensor, n: int, width: int, centered: bool = False) -> torch.Tensor:
    """The same by reshapes: in each block of 64 rows, byte j of a column holds rows j (low nibble) and
    j + 32 (high); in a last block of r < 64 rows, rows 2j and 2j + 1. `centered`: int8 q - 8 instead
    (each byte XOR 0x88 turns a nibble v into v ^ 8, which read as a signed 4-bit number is v - 8; the
    arithmetic shifts of int8 then sign-extend it), so the dequantization needs no subtraction."""
    flat = (packed.reshape(-1) ^ 0x88).view(torch.int8) if centered else packed.reshape(-1)
    out = torch.empty(n, width, dtype=flat.dtype)

    def split(pairs: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> None:
        if centered:
            torch.bitwise_right_shift(torch.bitwise_left_shift(pairs, 4), 4, out=low)
        else:
            torch.bitwise_and(pairs, 15, out=low)
        torch.bitwise_right_shift(pairs, 4, out=high)

    full, half = n // _BLOCK_N, _BLOCK_N // 2
    if full:  # bytes [block, column, j] -> [block, j, column], then rows j and j + 32 of each block
        head = flat[: full * width * half].reshape(full, width, half).transpose(1, 2).contiguous()
        rows = out[: full * _BLOCK_N].view(full, 2, half, width)
        split(head, rows[:, 0], rows[:, 1])
    rest = n - full * _BLOCK_N
    if rest:  # bytes [column, j] -> [j, column], then rows 2j and 2j + 1
        tail = flat[full * width * half :].reshape(width, rest // 2).t().contiguous()
        rows = out[full * _BLOCK_N :].view(rest // 2, 2, width)
        split(tail, rows[:, 0], rows[:, 1])
    return out


_blocks_match_kernel: bool | None = None  # set by `check_block_structure`, once per process


def check_block_structure() -> bool:
    """Whether `_nibbles_by_blocks` inverts this torch's kernel layout (checked on shapes with and
    without a last partial block); if not, the slower order-based inverse is used."""
    global _blocks_match_kernel
    if _blocks_match_kernel is None:
        generator = torch.Generator().manual_seed(0)
        _blocks_match_kernel = True
        for n, k in ((128, 64), (80, 32), (48, 64)):
            q = torch.randint(0, 16, (n, k), dtype=torch.int32, generator=generator)
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
            if packed.numel() * 2 != n * k or not torch.equal(_nibbles_by_blocks(packed, n, k), q.to(torch.uint8)):
                _blocks_match_kernel = False
    return _blocks_match_kernel


def layout_nibbles(layout: Int4Layout, centered: bool = False) -> torch.Tensor:
    """The layout's nibbles as uint8 [N, K] (or [N, 2K] when split), in the row-major order they were
    given; `centered`: as int8 nibble - 8."""
    n = layout.code_offset.shape[0]
    width = 2 * layout.packed.numel() // n
    if check_block_structure():  # checked when the layout was built
        return _nibbles_by_blocks(layout.packed, n, width, centered)
    q = _nibbles_by_order(layout.packed, n, width)
    return q.to(torch.int8) - 8 if centered else q


def codes_from_int4_layout(layout: Int4Layout) -> torch.Tensor:
    """The uint8 codes [N, K] that `build_int4_layout` was given (its exact inverse)."""
    q = layout_nibbles(layout).to(torch.int32)
    n, width = q.shape
    v = (q[:, : width // 2] << 4) + q[:, width // 2 :] if layout.split else q
    codes = v.reshape(n, -1, layout.kernel_group) - layout.code_offset.to(torch.int32)[..., None]
    return codes.reshape(n, -1).to(torch.uint8)


def dense_weight_from_int4_layout(layout: Int4Layout) -> torch.Tensor:
    """The weight W [N, K] the kernel multiplies by, in the layout's dtype:
    (q - 8) * scale + zero per kernel group, the [h | l] halves summed when split. bfloat16 layouts on
    CPU take the compiled one-pass rebuild (`stream_kernels`), bit-identical to `_dense_weight_torch`."""
    compiled = (
        layout.dtype == layout.scale_zero.dtype == torch.bfloat16
        and layout.packed.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and check_block_structure()
        and stream_kernels.load() is not None
    )
    if not compiled:
        return _dense_weight_torch(layout)
    n = layout.code_offset.shape[0]
    w = stream_kernels.dequantize_int4_layout_bf16(layout.packed, layout.scale_zero, layout.kernel_group, n)
    width = w.shape[1]
    return w[:, : width // 2] + w[:, width // 2 :] if layout.split else w


def _dense_weight_torch(layout: Int4Layout) -> torch.Tensor:
    """`dense_weight_from_int4_layout` in pure PyTorch."""
    q = layout_nibbles(layout, centered=True)
    n, width = q.shape
    groups = width // layout.kernel_group
    # [N, groups, 1] each, contiguous: elementwise ops broadcast fastest from a dense operand
    scale, zero = (t.contiguous() for t in layout.scale_zero.to(layout.dtype).permute(1, 0, 2).unsqueeze(2).unbind(-1))
    w = q.view(n, groups, layout.kernel_group).to(layout.dtype).mul_(scale).add_(zero).view(n, width)
    return w[:, : width // 2] + w[:, width // 2 :] if layout.split else w


def int4_linear(x: torch.Tensor, layout: Int4Layout) -> torch.Tensor:
    """x @ W^T for x [..., K] in the layout's dtype, W held in `layout`: the kernel for few rows, a
    dense matmul of the dequantized layout from `DENSE_FROM_ROWS` rows on."""
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if x2.shape[0] >= DENSE_FROM_ROWS:
        y = F.linear(x2, dense_weight_from_int4_layout(layout))
    else:
        y = int4_kernel_mm(x2, layout)
    return y.reshape(*lead, y.shape[-1])


def int4_kernel_mm(x2: torch.Tensor, layout: Int4Layout) -> torch.Tensor:
    """x2 @ W^T for x2 [rows, K] by torch's int4 kernel."""
    if layout.split:
        x2 = torch.cat([x2, x2], dim=1)
    mm = torch.ops.aten._weight_int4pack_mm_for_cpu
    return mm(x2.contiguous(), layout.packed, layout.kernel_group, layout.scale_zero)
