"""Counting what a model costs: stored bytes, MACs, BitOps, average bits, compression.

Conventions (the ones HAWQ-V3 and the InfoQ paper report in):
- MACs are counted by hooks on one forward pass of the example input you give
  (use batch size 1 for per-sample figures): a conv contributes
  out.numel() * (in_channels / groups) * kh * kw, a linear out.numel() * in_features.
- BitOps = sum over layers of MACs x w_bits x a_bits; a layer outside the
  policy, or with float activations, counts 32 bits for what stays float.
- Average bits = sum n_l b_l / sum n_l over the quantized layers' weights.
- Compression = fp32 bytes of those weights / their packed bytes (codes, scales, zero points).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn as nn

from .policy import BitPolicy, LayerBits
from .quant.apply import default_forward, packed_layers, policy_layers, tied_heads
from .quant.modules import (
    PACKED_TYPES,
    QuantConv2d,
    QuantEmbedding,
    QuantTiedLinear,
    float_layer_types,
    packed_weight_bytes,
)

FLOAT_BITS = 32


def model_size_bytes(model: nn.Module) -> int:
    """Bytes of every tensor the model stores (its state dict), shared tensors counted once."""
    return sum(t.numel() * t.element_size() for t in _stored_tensors(model))


def _storage_key(t: torch.Tensor) -> tuple:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel(), t.dtype)


def tied_weights(model: nn.Module, layers: Mapping[str, nn.Module]) -> dict[str, list[str]]:
    """Layer -> the other state-dict keys holding the same weight tensor (tied weights, e.g. an LM head
    that shares the input embedding), for the layers of `layers` that have any."""
    keys_by_storage: dict[tuple, list[str]] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        if tensor.numel():
            keys_by_storage.setdefault(_storage_key(tensor.detach()), []).append(key)
    tied = {}
    for name, layer in layers.items():
        weight = getattr(layer, "weight", None)
        if isinstance(weight, torch.Tensor) and weight.numel():
            others = [k for k in keys_by_storage.get(_storage_key(weight.detach()), []) if k != f"{name}.weight"]
            if others:
                tied[name] = others
    return tied


def leftover_bytes(model: nn.Module, layers, dtype: torch.dtype | None = None) -> int:
    """Bytes the model stores besides the weights of `layers` (names): embeddings kept float, norms, biases,
    skipped layers; floating tensors counted at `dtype` when given (what packing casts the leftovers to)."""
    weights = {_storage_key(model.get_submodule(n).weight.detach()) for n in layers}
    total = 0
    for t in _stored_tensors(model):
        if _storage_key(t) not in weights:
            total += t.numel() * (dtype.itemsize if dtype is not None and t.is_floating_point() else t.element_size())
    return total


def unpacked_bytes(model: nn.Module) -> int:
    """Bytes a packed model stores outside its packed layers: embeddings kept float, norms, float layers."""
    prefixes = tuple(f"{n}." for n in packed_layers(model))
    packed_keys = {k for k in model.state_dict(keep_vars=True) if k.startswith(prefixes)}
    return sum(t.numel() * t.element_size() for t in _stored_tensors(model, packed_keys))


def _stored_tensors(model: nn.Module, exclude_keys: set[str] = frozenset()) -> list[torch.Tensor]:
    """The state dict's tensors, each shared storage view once (tied weights), minus `exclude_keys`."""
    seen, out = set(), []
    for name, tensor in model.state_dict(keep_vars=True).items():
        if name in exclude_keys:
            continue
        t = tensor.detach()
        key = _storage_key(t)
        if t.numel() and key in seen:
            continue
        seen.add(key)
        out.append(t)
    return out


def _layer_macs(module: nn.Module, output: torch.Tensor) -> int:
    if isinstance(module, (nn.Conv2d, QuantConv2d)):
        kh, kw = module.kernel_size
        return output.numel() * (module.in_channels // module.groups) * kh * kw
    weight_in = module.in_features if hasattr(module, "in_features") else module.weight.shape[0]  # HF Conv1D: [in, out]
    return output.numel() * weight_in


@torch.no_grad()
def count_macs(model: nn.Module, example_inputs, forward=None) -> dict[str, int]:
    """MACs per Linear / Conv2d layer (float or packed, tied heads included) for one forward pass of
    `example_inputs`; an embedding's lookup does none."""
    kinds = float_layer_types() + PACKED_TYPES + (QuantTiedLinear,)
    macs: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, kinds) and not isinstance(module, QuantEmbedding):

            def hook(m, args, out, name=name):
                macs[name] = macs.get(name, 0) + _layer_macs(m, out)

            hooks.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    try:
        (forward or default_forward)(model, example_inputs)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return macs


def bitops(model: nn.Module, policy: BitPolicy | Mapping | None, example_inputs, forward=None) -> int:
    """Sum of MACs x w_bits x a_bits over all Linear/Conv2d layers for one pass of `example_inputs`.

    Layers outside the policy (or float activations) count 32 bits. A packed model needs no policy:
    its layers carry their own bits."""
    macs = count_macs(model, example_inputs, forward)
    bits = _bits_by_layer(model, policy)
    total = 0
    for name, m in macs.items():
        lb = bits.get(name)
        w = lb.w_bits if lb else FLOAT_BITS
        a = lb.a_bits if lb and lb.a_bits is not None else FLOAT_BITS
        total += m * w * a
    return total


def _bits_by_layer(model: nn.Module, policy) -> dict[str, LayerBits]:
    """Bits of every packed layer and of what `policy` names; a tied head runs at its embedding's width."""
    modules = dict(model.named_modules())
    bits = {n: LayerBits(m.w_bits, m.a_bits) for n, m in modules.items() if isinstance(m, PACKED_TYPES)}
    if policy is not None:
        policy = policy if isinstance(policy, BitPolicy) else BitPolicy.from_dict(policy)
        candidates = list(policy_layers(model, policy)) + list(bits)
        bits.update(policy.resolve(candidates))
    heads = {n: m.tied_to for n, m in modules.items() if isinstance(m, QuantTiedLinear)}
    heads.update(tied_heads(model, [n for n in bits if isinstance(modules[n], nn.Embedding)]))
    bits.update({head: bits[embedding] for head, embedding in heads.items()})
    return bits


def mean_weight_bits(params: Mapping[str, int], w_bits: Mapping[str, int]) -> float:
    """Parameter-weighted mean weight bits over the layers of `w_bits` (the "average bits" of every
    budget, summary, card and plot); 0.0 for no parameters."""
    total = sum(params[n] for n in w_bits)
    return sum(params[n] * b for n, b in w_bits.items()) / total if total else 0.0


def compression_ratio(model: nn.Module, baseline_bits: int = 32) -> float:
    """fp32 (or fp16 with baseline_bits=16) bytes of the packed layers' weights over their packed bytes."""
    layers = [m for m in model.modules() if isinstance(m, PACKED_TYPES)]
    if not layers:
        raise ValueError("the model has no packed layers; call quantize_model first")
    float_bytes = sum(math.prod(m.weight_shape) * baseline_bits / 8 for m in layers)
    packed = sum(packed_weight_bytes(m.weight_shape, m.w_bits, m.group_size, m.symmetric) for m in layers)
    return float_bytes / packed


def expected_size_bytes(model: nn.Module) -> int:
    """The theoretical stored size of a packed model: sum(n_l * b_l)/8 rounded up per layer, plus
    scales and zero points, plus every tensor that is not a packed weight (float leftovers)."""
    total = 0
    packed_keys = set()  # by name: a layer that holds its kernel layout saves a stream rebuilt per call
    for name, m in model.named_modules():
        if isinstance(m, PACKED_TYPES):
            total += packed_weight_bytes(m.weight_shape, m.w_bits, m.group_size, m.symmetric)
            prefix = f"{name}." if name else ""
            packed_keys.update(prefix + k for k in ("weight_packed", "weight_scale", "weight_zero_point"))
    return total + sum(t.numel() * t.element_size() for t in _stored_tensors(model, packed_keys))
