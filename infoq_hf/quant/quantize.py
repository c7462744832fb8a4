"""`quantize_model`: pack a model's layers by a policy, rounding to nearest or with GPTQ (above both)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch.nn as nn

from ..policy import BitPolicy
from .apply import pack_embeddings, packed_layer, packed_layers, packing_scheme_for, resolve_policy, set_submodule
from .gptq import gptq_quantize_model
from .scheme import UNSET, PackingScheme


def quantize_model(
    model: nn.Module,
    policy: BitPolicy | Mapping,
    *,
    scheme: PackingScheme | Mapping | None = None,
    group_size: int | None = UNSET,
    symmetric: bool = UNSET,
    clip_search: bool = UNSET,
    skip_modules: Iterable[str] = (),
    skip_types: tuple = (),
    act_ranges: Mapping[str, tuple[float, float]] | None = None,
    conv_group_size: int | None = UNSET,
    rounding: str = UNSET,
    calibration: Iterable | None = None,
    gptq_options: Mapping | None = None,
    forward=None,
    progress: bool = False,
    candidates=None,
) -> nn.Module:
    """Replace the layers named by `policy` with packed low-bit layers, in place; returns the model.

    `scheme`: a `PackingScheme`, or its fields as shorthand: `group_size` applies to Linear layers
    (e.g. 64/128 for LLMs; None = per output channel), conv layers use `conv_group_size`, then
    `symmetric`, `clip_search`, `rounding`. Default: the scheme a policy from `allocate` was budgeted
    with (a different one is an error, see `packing_scheme_for`), else per output channel, asymmetric,
    round to nearest. Layers not in the policy stay float. A layer with `a_bits` needs its input range in
    `act_ranges` (see `infoq_hf.calibrate_activation_ranges`). `rounding` is "rtn" (round to nearest) or "gptq"
    (error-compensating, needs `calibration` batches run by `forward(model, batch)`; options
    `gptq_options={"damp": 0.1, "block_size": 128, "act_order": False}`; see `quant.gptq`).
    `candidates`: a `GPTQCandidates` with rounded weights (`gptq_candidates(..., keep_weights=True)`): each
    layer takes its codes at the policy's width from them instead of a new GPTQ pass (the allocation
    judged exactly these weights)."""
    scheme = packing_scheme_for(
        policy,
        scheme,
        group_size=group_size,
        conv_group_size=conv_group_size,
        symmetric=symmetric,
        clip_search=clip_search,
        rounding=rounding,
    )
    if candidates is not None and (scheme.rounding != "gptq" or not candidates.has_weights()):
        raise ValueError(
            "candidates= packs GPTQ's rounded weights: pass rounding='gptq' and candidates computed with "
            "keep_weights=True"
        )
    if scheme.rounding == "gptq" and candidates is None:
        gptq_quantize_model(
            model,
            policy,
            calibration,
            scheme=scheme,
            skip_modules=skip_modules,
            skip_types=skip_types,
            act_ranges=act_ranges,
            options=gptq_options,
            forward=forward,
            progress=progress,
        )
    else:
        resolved, _ = pack_embeddings(model, resolve_policy(model, policy, skip_modules, skip_types), scheme)
        for name, bits in resolved.items():
            packed = packed_layer(name, model.get_submodule(name), bits, scheme, act_ranges)
            if candidates is not None:
                packed.set_quantized(candidates.quantized(name, bits.w_bits), name)
            set_submodule(model, name, packed)
    record_on_transformers_config(model, scheme)
    return model


def record_on_transformers_config(model: nn.Module, scheme: PackingScheme) -> None:
    """A transformers model packed here, outside its quantizer, records how as its config's
    `quantization_config` (the policy of its packed layers and the scheme), so that a plain
    `save_pretrained` writes a checkpoint `from_pretrained` reloads packed (after `import infoq_hf`)
    instead of a float model with random weights. A model that already has one is left alone."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict") or getattr(model, "hf_quantizer", None) is not None:
        return
    if getattr(config, "quantization_config", None) is not None:
        return
    policy = {name: {"w_bits": m.w_bits, "a_bits": m.a_bits} for name, m in packed_layers(model).items()}
    config.quantization_config = {"quant_method": "infoq", "policy": policy, **scheme.to_dict()}
