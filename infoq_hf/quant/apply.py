"""Swap a model's float layers for packed ones according to a `BitPolicy`, and back."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn as nn

from ..names import any_matches, is_regex, unique_match
from ..policy import BitPolicy, LayerBits
from .modules import (
    PACKED_TYPES,
    QuantConv2d,
    QuantEmbedding,
    QuantLinear,
    QuantTiedLinear,
    float_layer_types,
    lookup_scale,
)
from .quantizer import RangeObserver
from .scheme import PackingScheme, resolve_scheme


def _skipped(name: str, module: nn.Module, skip_names: Iterable[str], skip_types: tuple) -> bool:
    return bool(skip_types and isinstance(module, skip_types)) or any_matches(skip_names, name)


def quantizable_layers(
    model: nn.Module, skip_modules: Iterable[str] = (), skip_types: tuple = (), embeddings: bool = False
) -> dict[str, nn.Module]:
    """The float Linear / Conv2d / transformers-Conv1D layers of a model (and its embeddings when
    `embeddings`: `nn.Embedding`s, and the scaled ones of `modules.lookup_scale`), in module order.

    `skip_modules` holds names (`infoq_hf.names`: exact, dot-suffix, or `re:<regex>`) to leave in float, `skip_types`
    module classes to leave in float (e.g. a classifier head class)."""
    skip_names = list(skip_modules)
    kinds = float_layer_types(embeddings)
    return {
        name: m
        for name, m in model.named_modules()
        if (type(m) in kinds or (embeddings and isinstance(m, nn.Embedding) and lookup_scale(m) is not None))
        and not _skipped(name, m, skip_names, tuple(skip_types))
    }


def unpackable_embeddings(model: nn.Module, skip_modules: Iterable[str] = ()) -> dict[str, str]:
    """{name: class name} of the embeddings infoq_hf cannot pack: subclasses of `nn.Embedding` whose
    forward does more than a lookup times a constant (`modules.lookup_scale`), so a packed lookup would
    change them."""
    skip_names = list(skip_modules)
    return {
        name: type(m).__name__
        for name, m in model.named_modules()
        if isinstance(m, nn.Embedding) and lookup_scale(m) is None and not _skipped(name, m, skip_names, ())
    }


def policy_layers(
    model: nn.Module, policy: Mapping, skip_modules: Iterable[str] = (), skip_types: tuple = ()
) -> dict[str, nn.Module]:
    """The layers a policy can name: the quantizable layers, and the embeddings it names by path. A
    `re:` key never reaches an embedding, so a policy's regexes mean what they meant before embeddings
    were quantizable."""
    layers = quantizable_layers(model, skip_modules, skip_types)
    embeddings = [
        n
        for n, m in quantizable_layers(model, skip_modules, skip_types, embeddings=True).items()
        if isinstance(m, nn.Embedding)
    ]
    named = {unique_match(k, embeddings) for k in policy if not is_regex(k)} - {None}
    return {n: m for n, m in model.named_modules() if n in layers or n in named}


def _unquantizable_hint(name: str, module: nn.Module) -> str:
    return (
        f"policy names layer {name!r} of type {type(module).__name__}, which infoq_hf cannot quantize "
        "(supported: nn.Linear, nn.Conv2d, transformers Conv1D, nn.Embedding); remove it from the policy"
    )


def find_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """Children of the outermost Sequential/ModuleList containers, in module order."""
    blocks: dict[str, nn.Module] = {}
    for name, module in model.named_modules():  # parents come before their children
        if any(name == b or name.startswith(b + ".") for b in blocks):
            continue
        if isinstance(module, (nn.Sequential, nn.ModuleList)):
            for child_name, child in module.named_children():
                blocks[f"{name}.{child_name}" if name else child_name] = child
    return blocks


def overwrite_weight(weight: torch.Tensor, value: torch.Tensor) -> None:
    """Write `value` into a layer's weight in place. A caller's `torch.autocast` keeps each weight's cast
    for its whole region, so that cache is dropped: the next forward runs the new weight."""
    weight.copy_(value)
    torch.clear_autocast_cache()


def set_submodule(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put `new` in place of the submodule `name` of `model` (a dotted path)."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def resolve_policy(
    model: nn.Module, policy: BitPolicy | Mapping, skip_modules: Iterable[str] = (), skip_types: tuple = ()
) -> dict[str, LayerBits]:
    """Match a policy to the model's quantizable layers; clear errors for unknown or unsupported layers."""
    policy = policy if isinstance(policy, BitPolicy) else BitPolicy.from_dict(policy)
    layers = policy_layers(model, policy, skip_modules, skip_types)
    all_modules = dict(model.named_modules())
    try:
        resolved = policy.resolve(layers)
    except ValueError as e:
        # Explain a name that exists but is of the wrong type, or was skipped on purpose.
        for key in policy:
            if key in all_modules and key not in layers:
                module = all_modules[key]
                if type(module) in float_layer_types():
                    raise ValueError(f"policy names layer {key!r}, which is listed in the modules to skip") from None
                if isinstance(module, PACKED_TYPES):
                    raise ValueError(f"layer {key!r} is already quantized; call model.dequantize() first") from None
                raise ValueError(_unquantizable_hint(key, module)) from None
        raise e
    heads = tied_heads(model, [n for n in resolved if isinstance(layers[n], nn.Embedding)])
    both = sorted(h for h in heads if h in resolved)
    if both:
        raise ValueError(
            f"policy names {both}, whose weight is the embedding {heads[both[0]]!r}'s (tied): a tied head "
            "takes its embedding's width; remove it from the policy"
        )
    return resolved


def tied_heads(model: nn.Module, embeddings: Iterable[str]) -> dict[str, str]:
    """{head: embedding}: the Linear layers whose weight is one of these embeddings' (tied output heads):
    the same parameter, or named tied by transformers (whose empty skeleton is tied only after loading)."""
    embeddings = list(embeddings)
    owner = {id(model.get_submodule(e).weight): e for e in embeddings}
    heads = {
        n: owner[id(m.weight)] for n, m in model.named_modules() if isinstance(m, nn.Linear) and id(m.weight) in owner
    }
    by_key = {f"{e}.weight": e for e in embeddings}
    linear = {f"{n}.weight": n for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    for a, b in (getattr(model, "all_tied_weights_keys", None) or {}).items():
        for head_key, embedding_key in ((a, b), (b, a)):
            if head_key in linear and embedding_key in by_key:
                heads[linear[head_key]] = by_key[embedding_key]
    return heads


def pack_embeddings(
    model: nn.Module, resolved: Mapping[str, LayerBits], scheme: PackingScheme, builder=None
) -> tuple[dict[str, LayerBits], dict[str, nn.Module]]:
    """Pack the embeddings `resolved` names (round to nearest: a lookup has no Hessian for GPTQ to use) and
    make their tied heads `QuantTiedLinear`s, in place. Returns (the rest of `resolved`, the replaced float
    modules by name). `builder(name, layer, bits)` makes the packed embedding (default: quantized from the
    float weight; loading builds empty ones)."""
    embeddings = {n: b for n, b in resolved.items() if isinstance(model.get_submodule(n), nn.Embedding)}
    heads = tied_heads(model, embeddings)
    replaced = {}
    for name, bits in embeddings.items():
        layer = model.get_submodule(name)
        replaced[name] = layer
        q = builder(name, layer, bits) if builder else packed_layer(name, layer, bits, scheme, None)
        set_submodule(model, name, q)
    for head, embedding in heads.items():
        layer = model.get_submodule(head)
        replaced[head] = layer
        set_submodule(model, head, QuantTiedLinear(model.get_submodule(embedding), embedding, layer.bias))
    _forget_transformers_ties(model, heads)
    return {n: b for n, b in resolved.items() if n not in embeddings}, replaced


def _forget_transformers_ties(model: nn.Module, heads: Mapping[str, str]) -> None:
    """transformers re-ties `head.weight` to `embedding.weight` by name after loading (and counts them); the
    packed pair has neither parameter, the tie is `QuantTiedLinear`'s."""
    keys = getattr(model, "all_tied_weights_keys", None)
    if not keys or not heads:
        return
    names = {f"{n}.weight" for pair in heads.items() for n in pair}
    for target in [t for t, source in keys.items() if t in names or source in names]:
        del keys[target]


def packing_scheme_for(policy, scheme: PackingScheme | Mapping | None = None, **shorthand) -> PackingScheme:
    """The scheme to pack `policy` with: `scheme` or the shorthand fields, over a default of the scheme
    the policy was budgeted with (`allocate` records its table's) or, for a plain policy, one scale per
    output channel. A policy budgeted for one codes layout packed with another would miss its budget:
    that is an error (the rounding may differ)."""
    budgeted = policy.scheme if isinstance(policy, BitPolicy) else None
    chosen = resolve_scheme(scheme, budgeted or PackingScheme(), **shorthand)
    if budgeted is not None and not budgeted.same_format(chosen):
        raise ValueError(
            f"this policy was allocated for packing with {budgeted.describe()}, but packing was asked for with "
            f"{chosen.describe()}: the sizes it was budgeted with would not hold. Pack with the policy's scheme "
            "(leave group_size=/symmetric=/... unset), or search and allocate again with the new settings"
        )
    return chosen


def packed_layer(name: str, layer: nn.Module, bits: LayerBits, scheme: PackingScheme, act_ranges) -> nn.Module:
    """The packed (round-to-nearest) replacement of one float layer, its input range set when it has a_bits."""
    kwargs = dict(
        w_bits=bits.w_bits,
        symmetric=scheme.symmetric,
        a_bits=bits.a_bits,
        clip_search=scheme.clip_search,
        where=name,
        group_size=scheme.group_for(layer),
    )
    if isinstance(layer, nn.Conv2d):
        q = QuantConv2d.from_float(layer, **kwargs)
    elif isinstance(layer, nn.Embedding):
        q = QuantEmbedding.from_float(layer, **kwargs)
    else:
        q = QuantLinear.from_float(layer, **kwargs)
    if bits.a_bits is not None:
        if act_ranges is None or name not in act_ranges:
            raise ValueError(
                f"layer {name!r} has a_bits={bits.a_bits} but no calibrated input range; pass "
                "act_ranges=calibrate_activation_ranges(model, batches, policy)"
            )
        q.set_input_range(*act_ranges[name])
    return q


def leftover_dtype(requested: str | None, model: nn.Module) -> torch.dtype | None:
    """The dtype a packed model's float leftovers are cast to (`InfoQConfig.float_dtype`; None: left as
    they are). "auto": bfloat16 for a transformers model whose float weights are float32 (such models
    ship in half precision; bfloat16 keeps float32's range), None for any other model."""
    if requested != "auto":
        return None if requested is None else getattr(torch, requested)
    if not hasattr(getattr(model, "config", None), "to_dict"):
        return None
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    return torch.bfloat16 if dtypes == {torch.float32} else None


def cast_float_leftovers(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """Cast what a packed model stores in float (parameters and saved buffers: embeddings, norms, biases,
    skipped layers) to `dtype`, in place. The packed layers' scales stay float32 (the format), and runtime
    buffers (e.g. rotary frequencies) keep their dtype, as `from_pretrained(dtype=...)` leaves them."""
    for module in model.modules():
        keep = set(module._non_persistent_buffers_set)
        if isinstance(module, (QuantLinear, QuantConv2d)):
            keep |= {"weight_scale", "input_scale"}
        for param in module._parameters.values():
            if param is not None and param.is_floating_point():
                param.data = param.data.to(dtype)  # a tied parameter is one object: cast once
        for name, buf in module._buffers.items():
            if buf is not None and buf.is_floating_point() and name not in keep:
                module._buffers[name] = buf.to(dtype)
        if isinstance(module, QuantEmbedding):  # its rows come out in the leftovers' dtype
            module.output_dtype = dtype
    return model


COMPUTE_DTYPES = (None, "bfloat16", "float16")


def set_compute_dtype(model: nn.Module, dtype) -> nn.Module:
    """Make every packed Linear of `model` compute in `dtype` ("bfloat16", "float16", a torch dtype, or
    None for its input's dtype), whatever the dtype of the rest of the model: the output is cast back.
    A float32 model then runs its packed layers through the fast bfloat16 path on CPU (torch has no
    fast float32 one) while its norms, embeddings and head stay float32, as bitsandbytes'
    `bnb_4bit_compute_dtype` does. In place; returns the model."""
    name = str(dtype).removeprefix("torch.") if dtype is not None else None
    if name not in COMPUTE_DTYPES:
        raise ValueError(f"compute_dtype must be one of {COMPUTE_DTYPES} (or the torch dtype), got {dtype!r}")
    for module in model.modules():
        if isinstance(module, QuantLinear):
            module.compute_dtype = None if name is None else getattr(torch, name)
    return model


def dequantize_model(model: nn.Module) -> nn.Module:
    """Replace every packed layer with an equivalent float layer in the dtype of the model's float
    leftovers, in place; returns the model. A tied head becomes a Linear sharing the float embedding's
    weight again."""
    modules = list(model.named_modules())
    packed_ids = {id(p) for _, m in modules if isinstance(m, PACKED_TYPES) for p in m.parameters()}
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point() and id(p) not in packed_ids), None)
    for name, module in modules:
        if isinstance(module, PACKED_TYPES):
            layer = module.to_float()
            set_submodule(model, name, layer if dtype is None else layer.to(dtype))
    for name, module in modules:
        if isinstance(module, QuantTiedLinear):
            set_submodule(model, name, module.to_float(model.get_submodule(module.tied_to)))
    config = getattr(model, "config", None)
    recorded = getattr(config, "quantization_config", None)
    if isinstance(recorded, dict) and recorded.get("quant_method") == "infoq":  # what `quantize_model` recorded
        del config.quantization_config
    return model


def packed_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, PACKED_TYPES)}


@torch.no_grad()
def calibrate_activation_ranges(
    model: nn.Module, batches: Iterable, policy: BitPolicy | Mapping, forward=None, percentile: float | None = None
) -> dict[str, tuple[float, float]]:
    """Observe the input range of every layer the policy gives `a_bits`, over calibration batches.

    `forward(model, batch)` runs one batch (default: `model(**batch)` for dicts, `model(batch[0])`
    for tuples, `model(batch)` otherwise)."""
    resolved = {n: b for n, b in resolve_policy(model, policy).items() if b.a_bits is not None}
    observers = {n: RangeObserver(percentile) for n in resolved}
    hooks = [
        model.get_submodule(n).register_forward_pre_hook(lambda m, args, n=n: observers[n].update(args[0]))
        for n in resolved
    ]
    try:
        for batch in batches:
            (forward or default_forward)(model, batch)
    finally:
        for h in hooks:
            h.remove()
    missing = [n for n, o in observers.items() if not o.seen]
    if missing:
        raise ValueError(f"no calibration data reached layers {missing[:5]}; check the batches and forward function")
    return {n: (o.lo, o.hi) for n, o in observers.items()}


def batch_to_model_device(batch, model: nn.Module):
    """A batch's tensors on the device of the model's first parameter (a GPU model, CPU batches)."""
    device = next((p.device for p in model.parameters() if p.device.type != "meta"), None)
    if device is None:
        return batch
    if isinstance(batch, Mapping):
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(v.to(device) if isinstance(v, torch.Tensor) else v for v in batch)
    return batch.to(device) if isinstance(batch, torch.Tensor) else batch


def default_forward(model: nn.Module, batch):
    """Run one calibration batch: dict -> model(**inputs), (inputs, labels) tuple -> model(inputs)."""
    if isinstance(batch, Mapping):
        return model(**{k: v for k, v in batch.items() if k != "labels"})
    if isinstance(batch, (tuple, list)):
        return model(batch[0])
    return model(batch)
