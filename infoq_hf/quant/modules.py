"""Packed low-bit layers: `QuantLinear`, `QuantConv2d` and `QuantEmbedding` (with `QuantTiedLinear`,
an output head that shares a packed embedding's codes).

They hold the weight only as packed integer codes (`weight_packed`, uint8) plus
`weight_scale` (float32, [out, n_groups]) and, for asymmetric schemes,
`weight_zero_point` (uint8, [out, n_groups]); the exact forward unpacks and
dequantizes on the fly, so the weights stay packed in memory. On CPU, bf16/fp16
inputs of a `QuantLinear` take torch's int4 kernel instead, on the codes repacked
into its layout (`kernels.py`); the layer then holds that layout instead of the
bit stream (`weight_packed` becomes a meta tensor, no memory) and rebuilds the
stream exactly when saved, loaded into, moved or read. float32 inputs on CPU take
compiled kernels that read the bit stream as it is (`stream_kernels.py`). Optionally the
input activation is fake-quantized per tensor (`input_scale`,
`input_zero_point`). The bias stays float.

The stored names deliberately differ from `weight`: a loader that does not know
this format finds no `weight` and cannot silently load codes as floats.
"""

from __future__ import annotations

import math
import weakref

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import stream_kernels
from .kernels import KERNEL_DTYPES, build_int4_layout, codes_from_int4_layout, int4_linear, unsupported_reason
from .packing import check_bits, pack, packed_nbytes, unpack
from .quantizer import (
    WeightScheme,
    activation_qparams,
    dequantize_codes,
    effective_group_size,
    fake_quantize_activation,
    fake_quantize_weight,
    group_count,
    quantize_weight,
)

try:  # GPT-2 style layers store Linear weights transposed
    from transformers.pytorch_utils import Conv1D as HFConv1D
except Exception:  # transformers is optional for plain PyTorch users
    HFConv1D = None


def oriented_weight(layer: nn.Module) -> torch.Tensor:
    """A float layer's weight as [out, ...] (transformers' Conv1D stores Linear weights as [in, out])."""
    if HFConv1D is not None and isinstance(layer, HFConv1D):
        return layer.weight.t()
    return layer.weight


def fake_quantize_layer(layer: nn.Module, weight: torch.Tensor, scheme: WeightScheme, where: str = "") -> torch.Tensor:
    """Quantize-dequantize `weight` (stored as `layer` stores it), grouping along its input axis."""
    if HFConv1D is not None and isinstance(layer, HFConv1D):
        return fake_quantize_weight(weight.t(), scheme, where).t()
    return fake_quantize_weight(weight, scheme, where)


def packed_weight_bytes(shape, bits: int, group_size: int | None, symmetric: bool) -> int:
    """Bytes a packed weight of `shape` takes: codes + float32 scales + uint8 zero points."""
    numel = math.prod(int(d) for d in shape)
    scales = int(shape[0]) * group_count(shape, group_size)
    return packed_nbytes(numel, bits) + scales * 4 + (0 if symmetric else scales)


_FLOAT32_BUFFERS = ("weight_scale", "input_scale")  # stored float32 whatever the model's dtype


class _PackedWeightLayer(nn.Module):
    """Shared storage and (de)quantization logic of the packed layers."""

    weight_shape: tuple[int, ...]

    def _init_packed(self, weight_shape, w_bits, group_size, symmetric, a_bits, where):
        self.w_bits = check_bits(int(w_bits), where)
        self.a_bits = None if a_bits is None else check_bits(int(a_bits), where)
        self.group_size = group_size
        self.symmetric = bool(symmetric)
        self.weight_shape = tuple(int(d) for d in weight_shape)
        n_groups = group_count(self.weight_shape, group_size)
        out = self.weight_shape[0]
        numel = math.prod(self.weight_shape)
        self.register_buffer("weight_packed", torch.zeros(packed_nbytes(numel, self.w_bits), dtype=torch.uint8))
        self.register_buffer("weight_scale", torch.ones(out, n_groups, dtype=torch.float32))
        if not self.symmetric:
            self.register_buffer("weight_zero_point", torch.zeros(out, n_groups, dtype=torch.uint8))
        else:
            self.weight_zero_point = None
        if self.a_bits is not None:
            self.register_buffer("input_scale", torch.ones((), dtype=torch.float32))
            self.register_buffer("input_zero_point", torch.zeros((), dtype=torch.int32))

    def _apply(self, fn, recurse=True):
        # Casting a model (`model.to(torch.bfloat16)`, `.half()`) casts its float leftovers, the bias
        # included; the format keeps the scales in float32, so those only follow device moves.
        scales = {k: self._buffers[k] for k in _FLOAT32_BUFFERS if self._buffers.get(k) is not None}
        super()._apply(fn, recurse)
        for k, before in scales.items():
            if self._buffers[k].dtype != before.dtype:
                self._buffers[k] = before.to(self._buffers[k].device)
        return self

    @property
    def scheme(self) -> WeightScheme:
        return WeightScheme(self.w_bits, self.group_size, self.symmetric)

    def set_weight(self, weight: torch.Tensor, clip_search: bool = False, where: str = "") -> None:
        """Quantize a float weight into this layer's packed buffers."""
        if tuple(weight.shape) != self.weight_shape:
            raise ValueError(f"layer {where!r}: weight shape {tuple(weight.shape)} != {self.weight_shape}")
        scheme = WeightScheme(self.w_bits, self.group_size, self.symmetric, clip_search)
        self.set_quantized(quantize_weight(weight, scheme, where), where)

    def set_quantized(self, qw, where: str = "") -> None:
        """Store precomputed codes (a `QuantizedWeight`, e.g. from GPTQ) in this layer's packed buffers."""
        mine = (self.weight_shape, self.w_bits, self.group_size, self.symmetric)
        theirs = (tuple(qw.shape), qw.scheme.bits, qw.scheme.group_size, qw.scheme.symmetric)
        if theirs != mine:
            raise ValueError(
                f"layer {where!r}: quantized weight (shape, bits, group_size, symmetric) = {theirs} "
                f"does not match the packed layer's {mine}"
            )
        self.weight_packed = pack(qw.codes, self.w_bits).to(self.weight_scale.device)
        self.weight_scale = qw.scale.to(self.weight_scale.device)
        if qw.zero_point is not None:
            self.weight_zero_point = qw.zero_point.to(self.weight_scale.device)

    def set_input_range(self, lo: float, hi: float) -> None:
        """Set the activation quantizer from an observed input range."""
        if self.a_bits is None:
            raise ValueError("this layer has no activation quantizer (a_bits is None)")
        scale, zero = activation_qparams(lo, hi, self.a_bits)
        self.input_scale.fill_(scale)
        self.input_zero_point.fill_(zero)

    def codes(self) -> torch.Tensor:
        """The integer codes as uint8 [out, numel / out]."""
        return unpack(self.weight_packed, self.w_bits, math.prod(self.weight_shape)).reshape(self.weight_shape[0], -1)

    @property
    def codes_per_scale(self) -> int:
        """Codes sharing one scale along a row: the effective group, or the whole fan-in per channel."""
        fan_in = math.prod(self.weight_shape[1:])
        return effective_group_size(self.weight_shape, self.group_size) or fan_in

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        out, fan_in, group = self.weight_shape[0], math.prod(self.weight_shape[1:]), self.codes_per_scale
        if stream_kernels.applies(self.weight_packed, (out, fan_in), group):  # the same numbers, compiled
            w = stream_kernels.dequantize(
                self.weight_packed, self.weight_scale, self.weight_zero_point, self.w_bits, group, fan_in
            )
        else:
            w = dequantize_codes(self.codes(), self.weight_scale, self.weight_zero_point, self.scheme)
        return w.reshape(self.weight_shape).to(dtype)

    @property
    def weight(self) -> torch.Tensor:
        """The effective (dequantized) float weight, for code that reads `layer.weight` (dtype, device,
        shape). Computed on access; the layer itself only stores packed codes."""
        w = self.dequantized_weight(self.weight_scale.dtype)
        return w.t() if getattr(self, "transposed_source", False) else w

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self.a_bits is None:
            return x
        return fake_quantize_activation(x, self.input_scale.to(x.dtype), self.input_zero_point.to(x.dtype), self.a_bits)

    def extra_repr(self) -> str:
        group = effective_group_size(self.weight_shape, self.group_size)
        g = "per-channel" if group is None else f"group={group}"
        a = "" if self.a_bits is None else f", a_bits={self.a_bits}"
        return f"w_bits={self.w_bits}, {g}, {'sym' if self.symmetric else 'asym'}{a}, shape={self.weight_shape}"


class QuantLinear(_PackedWeightLayer):
    """A packed replacement for `nn.Linear` (and transformers' transposed `Conv1D`)."""

    drops_stream_for_kernel = True  # once the kernel layout is built it is the only copy of the codes

    def __init__(
        self,
        in_features,
        out_features,
        bias=True,
        *,
        w_bits,
        group_size=None,
        symmetric=False,
        a_bits=None,
        transposed_source=False,
        where="",
    ):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.transposed_source = bool(transposed_source)  # rebuild a Conv1D on dequantize
        self._init_packed((out_features, in_features), w_bits, group_size, symmetric, a_bits, where)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        # Why bf16/fp16 inputs on CPU cannot take the int4 kernel (None: they take it).
        # (the group size the codes were made with: a request the layer's width does not divide is reduced)
        self.kernel_fallback_reason = unsupported_reason(
            self.weight_shape, effective_group_size(self.weight_shape, group_size)
        )
        self._kernel_cache = None  # ([(weakref, version) of the buffers it came from], Int4Layout); never saved
        # The dtype this layer computes in when its input has another (`set_compute_dtype`); None: the
        # input's. Not saved in the state dict: `InfoQConfig.compute_dtype` carries it in config.json.
        self.compute_dtype: torch.dtype | None = None

    @classmethod
    def from_float(
        cls, layer: nn.Module, *, w_bits, group_size=None, symmetric=False, a_bits=None, clip_search=False, where=""
    ):
        transposed = HFConv1D is not None and isinstance(layer, HFConv1D)
        weight = layer.weight.detach().t() if transposed else layer.weight.detach()
        out_f, in_f = weight.shape
        q = cls(
            in_f,
            out_f,
            layer.bias is not None,
            w_bits=w_bits,
            group_size=group_size,
            symmetric=symmetric,
            a_bits=a_bits,
            transposed_source=transposed,
            where=where,
        ).to(weight.device)
        q.set_weight(weight, clip_search, where)
        if layer.bias is not None:
            q.bias.data = layer.bias.detach().clone()  # a float leftover: kept in the model's dtype
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """bf16/fp16 inputs on CPU take torch's int4 kernel, or from `kernels.DENSE_FROM_ROWS` rows a
        dense matmul of the weight rebuilt from its layout (see `kernels`); float32 inputs of fewer than
        `stream_kernels.LINEAR_MAX_ROWS` rows on CPU a compiled kernel on the bit stream; everything else,
        and layers the kernels cannot take, the exact path: dequantize, then `F.linear`.
        With a `compute_dtype`, an input of another dtype is cast to it and the output back."""
        if self.compute_dtype is not None and x.dtype != self.compute_dtype:
            return self._compute(x.to(self.compute_dtype)).to(x.dtype)
        return self._compute(x)

    def _compute(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quantize_input(x)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        layout = self.kernel_layout(x)
        if layout is not None:
            y = int4_linear(x, layout)
        elif self._takes_stream_kernel(x):
            y = self._stream_linear(x)
        else:
            return F.linear(x, self.dequantized_weight(x.dtype), bias)
        return y if bias is None else y + bias

    def _takes_stream_kernel(self, x: torch.Tensor) -> bool:
        """float32 inputs of few rows on CPU: the compiled kernel on the bit stream (`stream_kernels`)."""
        if x.dtype != torch.float32 or x.numel() >= stream_kernels.LINEAR_MAX_ROWS * x.shape[-1]:
            return False
        if x.device.type == "cpu" and not torch.compiler.is_compiling():
            self._restore_stream()  # after a bf16 forward only the int4 layout holds the codes; this reads the stream
        return stream_kernels.applies(self.weight_packed, self.weight_shape, self.codes_per_scale)

    def _stream_linear(self, x: torch.Tensor) -> torch.Tensor:
        packed, scale, zero = self.weight_packed, self.weight_scale, self.weight_zero_point
        y = stream_kernels.linear(x.reshape(-1, x.shape[-1]), packed, scale, zero, self.w_bits, self.codes_per_scale)
        return y.reshape(*x.shape[:-1], y.shape[-1])

    @property
    def holds_kernel_layout_only(self) -> bool:
        """Whether the bit stream was dropped for the kernel layout (see the module doc); a layer built on
        the meta device (as transformers does before loading) holds neither."""
        return self.weight_packed.is_meta and self._kernel_cache is not None

    def codes(self) -> torch.Tensor:
        if self.holds_kernel_layout_only:
            if torch.compiler.is_compiling():
                raise RuntimeError(
                    "this layer holds only its int4 kernel layout (a bf16/fp16 forward ran on CPU), "
                    "which a float32 trace cannot read; trace in bf16/fp16, or reload the checkpoint "
                    "before tracing in float32"
                )
            return codes_from_int4_layout(self._kernel_cache[1])
        return super().codes()

    def _restore_stream(self) -> None:
        if self.holds_kernel_layout_only:
            self._buffers["weight_packed"] = pack(self.codes(), self.w_bits)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.holds_kernel_layout_only:  # the checkpoint format is the bit stream, rebuilt exactly
            destination[prefix + "weight_packed"] = pack(self.codes(), self.w_bits)

    def _load_from_state_dict(self, *args, **kwargs):
        self._restore_stream()  # loading copies into the buffers in place
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, recurse=True):
        self._restore_stream()  # a move or cast acts on the stream; the layout is rebuilt on the next forward
        return super()._apply(fn, recurse)

    def kernel_layout(self, x: torch.Tensor):
        """The int4 kernel's copy of the weight for inputs like `x`, or None for the exact path. Built on
        first use and rebuilt whenever the packed buffers were replaced or written in place (a new
        `set_weight`, `load_state_dict`, a move between devices); the layout then replaces the bit stream."""
        if x.device.type != "cpu" or x.dtype not in KERNEL_DTYPES or self.kernel_fallback_reason is not None:
            return None
        if torch.compiler.is_compiling():  # tracing sees the layout built by an eager forward, as constants
            cached = self._kernel_cache
            return cached[1] if cached is not None and cached[1].dtype == x.dtype else None
        held = self._buffers  # read directly: this runs on every call, and Module.__getattr__ is slow
        buffers = [held["weight_packed"], held["weight_scale"], held.get("weight_zero_point")]
        buffers = [b for b in buffers if b is not None]
        cached = self._kernel_cache
        if cached is None or cached[1].dtype != x.dtype or not _built_from(cached[0], buffers):
            layout = build_int4_layout(
                self.codes(),
                self.weight_scale,
                self.weight_zero_point,
                self.w_bits,
                effective_group_size(self.weight_shape, self.group_size),
                x.dtype,
            )
            if self.drops_stream_for_kernel:  # the layout holds the codes exactly: keep the weight once
                self._buffers["weight_packed"] = torch.empty_like(self.weight_packed, device="meta")
                buffers[0] = self.weight_packed
            self._kernel_cache = ([(weakref.ref(b), b._version) for b in buffers], layout)
        return self._kernel_cache[1]

    def to_float(self) -> nn.Module:
        w = self.dequantized_weight()
        if self.transposed_source:
            layer = HFConv1D(self.out_features, self.in_features)
            layer.weight.data.copy_(w.t())
        else:
            layer = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
            layer.weight.data.copy_(w)
        if self.bias is not None:
            layer.bias.data.copy_(self.bias.detach())
        return layer.to(self.weight_scale.device)


class QuantEmbedding(QuantLinear):
    """A packed replacement for `nn.Embedding` [num_embeddings, dim]: each row grouped along `dim`, as a
    Linear's inputs are. A lookup unpacks only the rows asked for (when rows start on a pack boundary,
    dim a multiple of 8); an output head tied to it (`QuantTiedLinear`) multiplies by the same codes
    through `QuantLinear`'s forward, the int4 kernel included. Lookups read the bit stream, so it is
    kept beside a kernel layout. The output takes `output_dtype`: the float layer's dtype, following
    casts of the model; `output_scale` multiplies it as a scaled embedding (Gemma's) does its lookups
    (see `lookup_scale`), not the tied head's product."""

    drops_stream_for_kernel = False

    def __init__(
        self,
        num_embeddings,
        embedding_dim,
        padding_idx=None,
        *,
        w_bits,
        group_size=None,
        symmetric=False,
        where="",
        output_dtype: torch.dtype | None = None,
        output_scale: float = 1.0,
    ):
        super().__init__(
            embedding_dim,
            num_embeddings,
            bias=False,
            w_bits=w_bits,
            group_size=group_size,
            symmetric=symmetric,
            where=where,
        )
        self.num_embeddings, self.embedding_dim = int(num_embeddings), int(embedding_dim)
        self.padding_idx = padding_idx
        self.output_dtype = output_dtype or torch.get_default_dtype()
        self.output_scale = float(output_scale)

    @classmethod
    def from_float(
        cls, layer: nn.Embedding, *, w_bits, group_size=None, symmetric=False, a_bits=None, clip_search=False, where=""
    ):
        if a_bits is not None:
            raise ValueError(f"layer {where!r} is an embedding: its inputs are token ids, which take no a_bits")
        scale = lookup_scale(layer)
        if scale is None:
            raise ValueError(f"layer {where!r} ({type(layer).__name__}) does more than a lookup: it cannot be packed")
        q = cls(
            layer.num_embeddings,
            layer.embedding_dim,
            layer.padding_idx,
            w_bits=w_bits,
            group_size=group_size,
            symmetric=symmetric,
            where=where,
            output_dtype=layer.weight.dtype,
            output_scale=scale,
        ).to(layer.weight.device)
        q.set_weight(layer.weight.detach(), clip_search, where)
        return q

    def _apply(self, fn, recurse=True):
        self.output_dtype = fn(torch.empty(0, dtype=self.output_dtype)).dtype  # follows .to(dtype), .half(), ...
        return super()._apply(fn, recurse)

    def row_codes(self, rows: torch.Tensor) -> torch.Tensor:
        """Codes [len(rows), dim] of the given row indices."""
        if self.embedding_dim % 8:  # rows do not start on a block of eight codes: unpack all
            return self.codes()[rows]
        row_bytes = self.embedding_dim * self.w_bits // 8
        picked = self.weight_packed.view(self.num_embeddings, row_bytes)[rows].reshape(-1)
        return unpack(picked, self.w_bits, rows.numel() * self.embedding_dim).reshape(-1, self.embedding_dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        rows = ids.reshape(-1)
        zero = None if self.weight_zero_point is None else self.weight_zero_point[rows]
        w = dequantize_codes(self.row_codes(rows), self.weight_scale[rows], zero, self.scheme).to(self.output_dtype)
        if self.output_scale != 1.0:  # in the output dtype, as the scaled embedding multiplies
            w = w * torch.tensor(self.output_scale).to(self.output_dtype)
        return w.reshape(*ids.shape, self.embedding_dim)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        """x @ W^T: the output head's product with this embedding's codes."""
        return QuantLinear.forward(self, x)

    def to_float(self) -> nn.Embedding:
        if self.output_scale != 1.0:
            layer = ScaledEmbedding(self.num_embeddings, self.embedding_dim, self.padding_idx, self.output_scale)
        else:
            layer = nn.Embedding(self.num_embeddings, self.embedding_dim, self.padding_idx)
        layer.weight.data = self.dequantized_weight(self.output_dtype)
        return layer.to(self.weight_scale.device)

    def extra_repr(self) -> str:
        scale = f", output_scale={self.output_scale:g}" if self.output_scale != 1.0 else ""
        return f"{self.num_embeddings}, {self.embedding_dim}, " + super().extra_repr() + scale


class ScaledEmbedding(nn.Embedding):
    """A float embedding whose lookups are multiplied by a constant (as Gemma's): what a packed scaled
    embedding dequantizes to. `scalar_embed_scale` names the scale as transformers' scaled embeddings do."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, embed_scale: float = 1.0):
        super().__init__(num_embeddings, embedding_dim, padding_idx)
        self.scalar_embed_scale = float(embed_scale)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return super().forward(ids) * torch.tensor(self.scalar_embed_scale).to(self.weight.dtype)


def lookup_scale(layer: nn.Module) -> float | None:
    """The constant an embedding multiplies its lookups by, or None where it does anything else (then
    it cannot be packed): 1.0 for `nn.Embedding`; for a subclass with a `scalar_embed_scale`
    (transformers' Gemma embeddings), that scale once its output on two rows is checked to be the lookup
    times it (not on the meta device, where transformers builds the model a checkpoint loads into)."""
    if type(layer) is nn.Embedding:
        return 1.0
    scale = getattr(layer, "scalar_embed_scale", None)
    if not isinstance(layer, nn.Embedding) or isinstance(scale, bool) or not isinstance(scale, (int, float)):
        return None
    if layer.weight.device.type == "meta":
        return float(scale)
    ids = torch.tensor([0, layer.num_embeddings - 1], device=layer.weight.device)
    with torch.no_grad():
        looked_up = F.embedding(ids, layer.weight, layer.padding_idx)
        expected = looked_up * torch.tensor(float(scale)).to(layer.weight.dtype)
        same = torch.allclose(layer(ids), expected, rtol=0, atol=0, equal_nan=True)  # exact; empty weights too
        return float(scale) if same else None


class QuantTiedLinear(nn.Module):
    """An output head whose weight is a packed embedding's (e.g. an LM head tied to the input embedding):
    it holds no codes of its own, only its bias if it has one, so the tie is one tensor at one width in
    memory and in the checkpoint. The embedding is referenced, not registered as a child (its tensors
    are saved once, under the embedding's name)."""

    def __init__(self, embedding: QuantEmbedding, tied_to: str, bias: torch.Tensor | None = None):
        super().__init__()
        object.__setattr__(self, "embedding", embedding)
        self.tied_to = tied_to
        self.in_features, self.out_features = embedding.embedding_dim, embedding.num_embeddings
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone())

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight, for code that reads `layer.weight` (shape, dtype); computed on access."""
        return self.embedding.dequantized_weight(self.embedding.output_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.embedding.linear(x)
        return y if self.bias is None else y + self.bias.to(y.dtype)

    def to_float(self, embedding: nn.Embedding) -> nn.Linear:
        """The float head tied to `embedding` (the float layer that replaced the packed one)."""
        layer = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        layer.weight = embedding.weight
        if self.bias is not None:
            layer.bias.data = self.bias.detach().clone()
        return layer

    def extra_repr(self) -> str:
        return f"tied to {self.tied_to!r}, in={self.in_features}, out={self.out_features}"


def conv2d_args(conv: nn.Conv2d) -> tuple:
    """The positional `nn.Conv2d` constructor arguments that rebuild `conv`'s shape and settings."""
    return (
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
        conv.padding_mode,
    )


class QuantConv2d(_PackedWeightLayer):
    """A packed replacement for `nn.Conv2d` (grouped and depthwise included), one scale per output channel
    unless a group size is given."""

    def __init__(
        self,
        in_channels,
        out_channels,
        kernel_size,
        stride=1,
        padding=0,
        dilation=1,
        groups=1,
        bias=True,
        padding_mode="zeros",
        *,
        w_bits,
        group_size=None,
        symmetric=False,
        a_bits=None,
        where="",
    ):
        super().__init__()
        ks = nn.modules.utils._pair(kernel_size)
        self.in_channels, self.out_channels, self.kernel_size = int(in_channels), int(out_channels), ks
        self.stride, self.dilation = nn.modules.utils._pair(stride), nn.modules.utils._pair(dilation)
        self.padding = padding if isinstance(padding, str) else nn.modules.utils._pair(padding)
        self.groups, self.padding_mode = int(groups), padding_mode
        shape = (out_channels, in_channels // groups, *ks)
        self._init_packed(shape, w_bits, group_size, symmetric, a_bits, where)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    @classmethod
    def from_float(
        cls, layer: nn.Conv2d, *, w_bits, group_size=None, symmetric=False, a_bits=None, clip_search=False, where=""
    ):
        q = cls(
            *conv2d_args(layer),
            w_bits=w_bits,
            group_size=group_size,
            symmetric=symmetric,
            a_bits=a_bits,
            where=where,
        ).to(layer.weight.device)
        q.set_weight(layer.weight.detach(), clip_search, where)
        if layer.bias is not None:
            q.bias.data = layer.bias.detach().clone()  # a float leftover: kept in the model's dtype
        return q

    def _conv_kwargs(self) -> dict:
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.dequantized_weight(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        x = self.quantize_input(x)
        if self.padding_mode != "zeros":
            pad = self._reversed_padding()
            return F.conv2d(F.pad(x, pad, mode=self.padding_mode), w, bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, w, bias, **self._conv_kwargs())

    def _reversed_padding(self):
        ph, pw = self.padding
        return (pw, pw, ph, ph)

    def to_float(self) -> nn.Conv2d:
        layer = nn.Conv2d(*conv2d_args(self))
        layer.weight.data.copy_(self.dequantized_weight())
        if self.bias is not None:
            layer.bias.data.copy_(self.bias.detach())
        return layer.to(self.weight_scale.device)


def _built_from(sources, buffers) -> bool:
    """Whether `buffers` are the very tensors `sources` recorded, unmodified since (identity via weak
    references, so a freed buffer whose address gets reused cannot pass for the old one)."""
    return len(sources) == len(buffers) and all(
        ref() is b and version == b._version for (ref, version), b in zip(sources, buffers)
    )


PACKED_TYPES = (QuantLinear, QuantConv2d)  # QuantEmbedding is a QuantLinear


def float_layer_types(embeddings: bool = False) -> tuple[type, ...]:
    """Float layer types infoq_hf knows how to quantize (`nn.Embedding` too when `embeddings`)."""
    types = [nn.Linear, nn.Conv2d]
    if HFConv1D is not None:
        types.append(HFConv1D)
    if embeddings:
        types.append(nn.Embedding)
    return tuple(types)
