"""What a saved checkpoint folder holds, read without loading its weights.

`read_checkpoint(folder)` gives its kind (transformers, timm, plain PyTorch), its InfoQ config and policy,
the sensitivity table saved beside it, and the layer sizes and size summary: from `infoq_summary.json`
when the save wrote one, else from the safetensors headers. A packed layer NAME stores NAME.weight_packed
(uint8, ceil(n*b/8) bytes) and NAME.weight_scale ([out, n_groups]); with the layer's bits from the stored
policy that fixes its weight count n exactly (see `packed_weight_numel`), and the headers' shapes and dtypes
give the stored bytes. Before anything is read from them, the headers are checked against the config's
policy and scheme on the model's architecture built on the meta device (no weights read), which also
gives the layers' names and order in the model; a plain module records no architecture, so its layers
are named as stored and ordered as its infoq_config.json policy lists them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch.nn as nn

from . import integrations  # noqa: F401  (registers quant_method "infoq")
from .accounting import compression_ratio, expected_size_bytes, mean_weight_bits, model_size_bytes
from .checkpoint import (
    GUARD,
    IMPORT_HINT_KEY,
    LAYERS_METADATA,
    WEIGHTS_NAME,
    build_packed_modules,
    check_checkpoint_tensors,
    layer_skeleton,
    read_infoq_config,
    read_json,
    read_tensor_specs,
)
from .integrations.timm import create_timm_model, load_quantized
from .integrations.transformers import checkpoint_renamer
from .integrity import header_json_object, verify_checkpoint_files
from .names import unique_match
from .policy import BitPolicy
from .quant.apply import packed_layers
from .quant.modules import packed_weight_bytes
from .quant.quantizer import group_count
from .sensitivity.table import SensitivityTable

TABLE_FILE = "infoq_sensitivity.json"
SUMMARY_FILE = "infoq_summary.json"
# safetensors dtype -> bytes per element
_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "U16": 2,
    "I16": 2,
    "F16": 2,
    "BF16": 2,
    "U32": 4,
    "I32": 4,
    "F32": 4,
    "U64": 8,
    "I64": 8,
    "F64": 8,
}


@dataclass
class CheckpointInfo:
    """What the model card and plots are made from (read from a saved checkpoint folder)."""

    kind: str  # "transformers", "timm" or "pytorch"
    config: dict  # the InfoQConfig dict, policy included
    policy: BitPolicy
    params: dict[str, int]  # layer -> parameter count (as far as known)
    summary: dict  # avg_bits, size_bytes, compression, float_size_bytes, ...
    model_config: dict = field(default_factory=dict)  # the model's config.json
    table: SensitivityTable | None = None


def checkpoint_kind(model_config: Mapping) -> str:
    """The kind of checkpoint a folder's config.json describes: "transformers", "timm" or "pytorch"."""
    if "model_type" in model_config or "architectures" in model_config:
        return "transformers"
    if "architecture" in model_config:
        return "timm"
    return "pytorch"


# ----------------------------------------------------------------------------- layer sizes of a packed model
def packed_layers_summary(model: nn.Module) -> tuple[dict[str, int], dict]:
    """Layer -> parameter count, and the size summary (bits, bytes, compression), of a packed model."""
    layers = packed_layers(model)
    if not layers:
        raise ValueError(
            "the model has no packed layers: quantize it first (infoq quantize, "
            "infoq_hf.quantize_model, or from_pretrained(..., quantization_config=InfoQConfig(...)))"
        )
    params = {n: math.prod(m.weight_shape) for n, m in layers.items()}
    summary = {
        "quantized_layers": len(layers),
        "avg_bits": mean_weight_bits(params, {n: m.w_bits for n, m in layers.items()}),
        "size_bytes": model_size_bytes(model),
        "expected_size_bytes": expected_size_bytes(model),
        "compression": compression_ratio(model),
    }
    return params, summary


# ------------------------------------------------------------------------ ... and of a checkpoint, from its headers
def packed_weight_numel(
    specs: Mapping[str, tuple[tuple[int, ...], str]], prefix: str, w_bits: int, group_sizes=()
) -> int | None:
    """The weight count of packed layer `prefix` from its stored shapes: the codes take ceil(n*w_bits/8)
    bytes, so n is one of at most ceil(8/w_bits) consecutive counts, and a multiple of `out` (the scale
    rows); where several fit (a layer with fewer than 8/w_bits output rows), the one whose grouping under
    one of `group_sizes` gives the stored scales per row. None when no count, or more than one, fits."""
    nbytes = math.prod(specs[f"{prefix}.weight_packed"][0])
    out, n_groups = specs[f"{prefix}.weight_scale"][0]
    if nbytes <= 0 or out <= 0:
        return None
    fits = [n for n in range((nbytes - 1) * 8 // w_bits + 1, nbytes * 8 // w_bits + 1) if n % out == 0]
    if len(fits) > 1:
        fits = [n for n in fits if any(group_count((out, n // out), g) == n_groups for g in group_sizes)]
    return fits[0] if len(fits) == 1 else None


def _header_summary(
    specs: Mapping[str, tuple[tuple[int, ...], str]],
    layers: Mapping[str, tuple[str, int]],
    numels: Mapping[str, int],
    symmetric: bool,
) -> tuple[dict[str, int], dict]:
    """`packed_layers_summary` of the model a checkpoint loads into, from its tensor headers: `layers` maps a
    model layer to (its checkpoint prefix, w_bits), `numels` a model layer to its weight count."""
    guards = {IMPORT_HINT_KEY} | {f"{p}.{GUARD}" if p else GUARD for p, _ in layers.values()}
    size = sum(math.prod(shape) * _DTYPE_BYTES[dtype] for key, (shape, dtype) in specs.items() if key not in guards)
    float_bytes = packed_bytes = stored_weight_bytes = 0
    for name, (prefix, w_bits) in layers.items():
        out, n_groups = specs[f"{prefix}.weight_scale"][0]
        float_bytes += numels[name] * 4
        fan_in = numels[name] // out  # n_groups full groups along it (the stored scales' columns)
        packed_bytes += packed_weight_bytes((out, fan_in), w_bits, fan_in // n_groups, symmetric)
        stored_weight_bytes += sum(
            math.prod(specs[k][0]) * _DTYPE_BYTES[specs[k][1]]
            for k in (f"{prefix}.weight_packed", f"{prefix}.weight_scale", f"{prefix}.weight_zero_point")
            if k in specs
        )
    params = {name: numels[name] for name in layers}
    summary = {
        "quantized_layers": len(layers),
        "avg_bits": mean_weight_bits(params, {n: w_bits for n, (_, w_bits) in layers.items()}),
        "size_bytes": size,
        "expected_size_bytes": size - stored_weight_bytes + packed_bytes,
        "compression": float_bytes / packed_bytes,
    }
    return params, summary


def _summary_from_headers(directory: Path, config, specs, skeleton) -> tuple[dict[str, int], dict]:
    """Layer sizes and size summary of a checkpoint from its headers; `skeleton` (the checked meta model and
    the specs under its key names, or None for a plain module) names and orders the layers as the model does."""
    groups = (config.group_size, config.conv_group_size)
    modules = {}
    if skeleton is not None:
        model, specs = skeleton
        modules = packed_layers(model)
    ckpt_packed = [k[: -len(".weight_packed")] for k in specs if k.endswith(".weight_packed")]
    if modules:  # every layer's tensors were matched by the header check
        layers = {n: (unique_match(n, ckpt_packed), m.w_bits) for n, m in modules.items()}
    else:
        resolved = config.policy.resolve(ckpt_packed)  # in policy order: infoq_config.json keeps the model's
        unlisted = sorted(set(ckpt_packed) - set(resolved))
        if unlisted:
            raise ValueError(
                f"{directory}: checkpoint has packed tensors for layers {unlisted[:5]} that its policy "
                "does not list; the policy and the weights come from different saves"
            )
        layers = {n: (n, lb.w_bits) for n, lb in resolved.items()}
    if not layers:
        raise ValueError(f"{directory} holds no packed layers: quantize the model first")
    numels = {n: packed_weight_numel(specs, p, b, groups) for n, (p, b) in layers.items()}
    for name, numel in numels.items():
        if numel is None and name in modules:  # a layer of under 8/bits rows: the architecture says
            numels[name] = math.prod(modules[name].weight_shape)
        elif numel is None:
            raise ValueError(
                f"{directory}: the stored codes of layer {name!r} do not fit the {layers[name][1]}-bit "
                "weight its policy gives it (or fit more than one weight size); push the quantized "
                "model object instead of the folder"
            )
    return _header_summary(specs, layers, numels, config.symmetric)


# ----------------------------------------------------------------------------- building and checking
def _architecture_class(directory: Path, model_config: Mapping):
    """The transformers model class config.json's `architectures` names, None when this transformers has
    none of that name; ValueError naming the field when it names something that is not a model class."""
    import transformers

    archs = model_config.get("architectures") or [None]
    arch = archs[0] if isinstance(archs, list) else archs
    if arch is None:
        return None
    if not isinstance(arch, str):
        raise ValueError(
            f"{directory / 'config.json'}: 'architectures' must be a list of model class names, got {archs!r}"
        )
    cls = getattr(transformers, arch, None)
    if cls is not None and not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise ValueError(
            f"{directory / 'config.json'}: 'architectures' names {arch!r}, which is not a transformers "
            "model class; the file was edited: save or download the checkpoint again"
        )
    return cls


def load_checkpoint_model(directory: Path, kind: str, model_config: Mapping) -> nn.Module:
    """The packed model of a transformers or timm checkpoint folder of `kind` (a plain one needs its float model)."""
    if kind == "transformers":
        import transformers

        cls = _architecture_class(directory, model_config)
        return (cls or transformers.AutoModel).from_pretrained(directory)
    if kind == "timm":
        return load_quantized(directory)
    raise ValueError(
        f"{directory} holds a plain PyTorch checkpoint; load it into its float model with "
        "infoq_hf.load_quantized(directory, model=...)"
    )


def _check_tensor_headers(directory: Path, kind: str, model_config: Mapping, config, specs=None):
    """Check the stored tensor headers against the config's policy and scheme, on a model skeleton built
    on the meta device (no weights read), so a folder whose config.json was edited is refused.

    Returns the skeleton and the specs under the model's key names, or None where no skeleton is built (a
    plain module, an architecture this transformers does not know)."""
    import torch

    with torch.device("meta"):
        if kind == "transformers":
            import transformers

            cls = _architecture_class(directory, model_config)
            if cls is None:
                return None  # an architecture this transformers does not know: loading will say so
            model = cls._from_config(transformers.AutoConfig.from_pretrained(directory))
            rename = checkpoint_renamer(model, None)
        elif kind == "timm":
            model, rename = create_timm_model(directory), (lambda key: key)
        else:  # a plain module: the layers' kinds and shapes recorded by save_quantized, if it did
            specs = specs if specs is not None else read_tensor_specs(sorted(directory.glob("*.safetensors")))
            layers = _recorded_layers(directory)
            if layers is None:
                return None  # saved before they were recorded: load_quantized checks on load
            model, rename = layer_skeleton(layers, specs), (lambda key: key)
    build_packed_modules(model, config.policy, config.scheme)
    specs = specs if specs is not None else read_tensor_specs(sorted(directory.glob("*.safetensors")))
    renamed = {rename(k): v for k, v in specs.items()}
    check_checkpoint_tensors(model, renamed)
    return model, renamed


def _recorded_layers(directory: Path) -> dict | None:
    from safetensors import safe_open

    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        return None
    with safe_open(str(weights), framework="pt") as handle:
        metadata = handle.metadata()
    return header_json_object(
        metadata, LAYERS_METADATA, weights, "the file is corrupt or was edited: save the checkpoint again"
    )


# ----------------------------------------------------------------------------- reading a folder
def read_checkpoint(directory: str | os.PathLike, *, table: SensitivityTable | None = None) -> CheckpointInfo:
    """Everything a model card needs from a checkpoint folder written by infoq (save_pretrained,
    save_quantized or `infoq quantize`): its policy, summary, sensitivity table (if saved beside it).
    No weights are loaded: layer sizes come from `infoq_summary.json`, else from the tensor headers."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory} is not a folder; pass a quantized checkpoint folder or model")
    if not (directory / WEIGHTS_NAME).is_file() and not list(directory.glob("*.safetensors")):
        raise FileNotFoundError(f"{directory} holds no *.safetensors weights: not a saved checkpoint")
    config = read_infoq_config(directory)
    if config.policy is None:
        raise ValueError(f"{directory}: its infoq config has no policy; the model was saved before quantization")
    model_config = read_json(directory / "config.json") if (directory / "config.json").is_file() else {}
    kind = checkpoint_kind(model_config)
    if table is None and (directory / TABLE_FILE).is_file():
        table = SensitivityTable.load(directory / TABLE_FILE)
    summary = read_json(directory / SUMMARY_FILE) if (directory / SUMMARY_FILE).is_file() else None
    if summary is not None and summary.get("params"):
        _check_tensor_headers(directory, kind, model_config, config)
        params = {k: int(v) for k, v in summary["params"].items()}
    else:  # older folder, or pushed from elsewhere: measure the checkpoint itself
        specs = read_tensor_specs(sorted(directory.glob("*.safetensors")))
        skeleton = _check_tensor_headers(directory, kind, model_config, config, specs)
        if skeleton is None and kind != "pytorch":  # no architecture to name the layers by: load the model
            params, measured = packed_layers_summary(load_checkpoint_model(directory, kind, model_config))
        else:
            params, measured = _summary_from_headers(directory, config, specs, skeleton)
        summary = {**measured, **(summary or {}), "params": params}
    verify_checkpoint_files(sorted(directory.glob("*.safetensors")))
    policy = _in_model_order(config.policy, params, table)
    return CheckpointInfo(kind, config.to_dict(), policy, params, summary, model_config, table)


def _in_model_order(policy: BitPolicy, params: Mapping[str, int], table: SensitivityTable | None) -> BitPolicy:
    """The policy in the model's block order: config.json stores it sorted alphabetically (transformers
    writes sorted keys), the summary's `params` and the table list layers in model order."""
    order: dict[str, int] = {}
    for name in list(params) + list(table.layers if table is not None else []):
        order.setdefault(name, len(order))
    names = sorted(policy, key=lambda n: (order.get(n, len(order)), n))
    return BitPolicy({n: policy[n] for n in names})


__all__ = ["SUMMARY_FILE", "TABLE_FILE", "CheckpointInfo", "packed_weight_numel", "read_checkpoint"]
