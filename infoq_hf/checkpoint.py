"""The packed checkpoint: build packed layers from a policy, check tensors against it, save and load.

Layout (format 1), shared by transformers' `save_pretrained` and `save_quantized`:
  model.safetensors   every tensor of the model's state dict; a packed layer NAME stores
                      NAME.weight_packed (uint8, ceil(n*b/8)), NAME.weight_scale (float32
                      [out, n_groups]), NAME.weight_zero_point (uint8, asymmetric only),
                      NAME.input_scale / NAME.input_zero_point (when a_bits is set), NAME.bias,
                      and a one-byte guard NAME.weight (see below);
  config.json         the model's own config with `quantization_config` = InfoQConfig.to_dict()
                      (the per-layer policy included);
  infoq_config.json   written by `save_quantized`: the same InfoQConfig dict (for non-transformers users).

The guards: transformers 5 only *warns* about a config whose quant_method it does not know and
then loads the model as float, re-initialising the missing `weight`s at random. A one-byte
`NAME.weight` makes that case a size-mismatch error instead, so a checkpoint read without
`import infoq_hf` fails loudly rather than yielding a silently random model. transformers' error
suggests `ignore_mismatched_sizes=True`, which re-initialises mismatched tensors by design (nothing
in a checkpoint can stop that), so one more one-byte tensor, IMPORT_HINT_KEY, is named after the fix:
transformers lists it in the load report it prints in both cases.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
import torch.nn as nn

from . import atomic_save
from .config import InfoQConfig
from .integrity import verify_safetensors
from .names import unique_match
from .policy import BitPolicy
from .quant.apply import pack_embeddings, packed_layers, policy_layers, set_submodule
from .quant.modules import QuantConv2d, QuantEmbedding, QuantLinear, conv2d_args, lookup_scale
from .quant.packing import packed_nbytes
from .quant.scheme import PackingScheme

GUARD = "weight"
IMPORT_HINT_KEY = "INFOQ_PACKED_CHECKPOINT__pip_install_infoq-hf__and_import_infoq_hf_before_from_pretrained"
WEIGHTS_NAME = "model.safetensors"
INFOQ_CONFIG_NAME = "infoq_config.json"
TIED_METADATA = "infoq_tied"  # safetensors header: {alias key: stored key} for tied tensors stored once
# safetensors header of `save_quantized`: {layer: [kind, weight shape]}, so a plain module's checkpoint can be
# checked against its policy without the model (see `layer_skeleton`)
LAYERS_METADATA = "infoq_layers"


# ----------------------------------------------------------------------------- building
def build_packed_modules(model: nn.Module, policy: BitPolicy | Mapping, scheme: PackingScheme) -> dict[str, nn.Module]:
    """Replace the float layers named by `policy` with empty packed layers of the right shapes (as
    `scheme` packs them), in place.

    Used before loading a packed state dict; the new layers live on the float layer's device (the
    meta device inside transformers' `from_pretrained`). Heads tied to a packed embedding become its
    `QuantTiedLinear`s, as when it was packed."""
    policy = policy if isinstance(policy, BitPolicy) else BitPolicy.from_dict(policy)
    layers = policy_layers(model, policy)
    built = {}

    def empty(name, layer, bits) -> nn.Module:
        kwargs = dict(
            w_bits=bits.w_bits,
            symmetric=scheme.symmetric,
            a_bits=bits.a_bits,
            where=name,
            group_size=scheme.group_for(layer),
        )
        with torch.device(layer.weight.device):
            if isinstance(layer, nn.Embedding):
                if bits.a_bits is not None:
                    raise ValueError(f"policy gives the embedding {name!r} a_bits={bits.a_bits}; token ids take none")
                del kwargs["a_bits"]
                q = QuantEmbedding(
                    layer.num_embeddings,
                    layer.embedding_dim,
                    layer.padding_idx,
                    output_dtype=layer.weight.dtype,
                    output_scale=lookup_scale(layer),
                    **kwargs,
                )
            elif isinstance(layer, nn.Conv2d):
                q = QuantConv2d(
                    *conv2d_args(layer),
                    **kwargs,
                )
            elif isinstance(layer, nn.Linear):
                q = QuantLinear(layer.in_features, layer.out_features, layer.bias is not None, **kwargs)
            else:  # transformers Conv1D keeps its weight as [in, out]
                n_in, n_out = layer.weight.shape
                q = QuantLinear(n_in, n_out, layer.bias is not None, transposed_source=True, **kwargs)
        if q.bias is not None:
            q.bias.data = q.bias.data.to(layer.bias.dtype)
        built[name] = q
        return q

    rest, _ = pack_embeddings(model, policy.resolve(layers), scheme, builder=empty)
    for name, bits in rest.items():
        set_submodule(model, name, empty(name, layers[name], bits))
    return built


def packed_settings(model: nn.Module) -> dict:
    """group_size / conv_group_size / symmetric shared by a model's packed layers (format 1 stores one each)."""
    layers = packed_layers(model)
    if not layers:
        raise ValueError("the model has no packed layers; quantize it first (infoq_hf.quantize_model)")

    def one(values, what):
        values = set(values)
        if len(values) > 1:
            raise ValueError(
                f"the packed layers mix {what} {sorted(values, key=str)}; the checkpoint format stores one"
            )
        return values.pop() if values else None

    return {
        "group_size": one((m.group_size for m in layers.values() if isinstance(m, QuantLinear)), "linear group sizes"),
        "conv_group_size": one(
            (m.group_size for m in layers.values() if isinstance(m, QuantConv2d)), "conv group sizes"
        ),
        "symmetric": bool(one((m.symmetric for m in layers.values()), "symmetric and asymmetric codes")),
    }


def policy_of(model: nn.Module) -> BitPolicy:
    """The policy a packed model carries in its layers."""
    return BitPolicy({n: {"w_bits": m.w_bits, "a_bits": m.a_bits} for n, m in packed_layers(model).items()})


def packed_layer_shapes(model: nn.Module) -> dict[str, list]:
    """Layer -> [kind ("linear", "embedding", "conv2d"), weight shape] of a model's packed layers."""

    def kind(m):
        return "embedding" if isinstance(m, QuantEmbedding) else "conv2d" if isinstance(m, QuantConv2d) else "linear"

    return {n: [kind(m), list(m.weight_shape)] for n, m in packed_layers(model).items()}


def layer_skeleton(layers: Mapping[str, list], specs: Mapping) -> nn.Module:
    """Float layers of the recorded kinds and shapes (see `packed_layer_shapes`) under their names, with a
    bias where the checkpoint stores one: what a plain module's packed tensors are checked against."""
    root = nn.Module()
    for name, entry in layers.items():
        try:
            kind, shape = entry
            shape = [int(d) for d in shape]
            bias = f"{name}.bias" in specs
            if kind == "embedding":
                layer = nn.Embedding(*shape)
            elif kind == "conv2d":
                layer = nn.Conv2d(shape[1], shape[0], tuple(shape[2:]), bias=bias)
            elif kind == "linear":
                layer = nn.Linear(shape[1], shape[0], bias=bias)
            else:
                raise ValueError(kind)
        except (TypeError, ValueError, IndexError, RuntimeError):
            raise ValueError(
                f"the {LAYERS_METADATA!r} header entry of layer {name!r} is not [kind, shape]; the file "
                "is corrupt or was edited: save the checkpoint again"
            ) from None
        parent = root
        *path, leaf = name.split(".")
        for part in path:
            if not hasattr(parent, part):
                parent.add_module(part, nn.Module())
            parent = getattr(parent, part)
        parent.add_module(leaf, layer)
    return root


# ----------------------------------------------------------------------------- checking
def expected_tensors(module: nn.Module) -> dict[str, tuple[tuple[int, ...], str]]:
    """Suffix -> (shape, safetensors dtype) of what a packed layer stores (bias excluded)."""
    n_groups = module.weight_scale.shape[1]
    out = module.weight_shape[0]
    numel = 1
    for d in module.weight_shape:
        numel *= d
    spec = {"weight_packed": ((packed_nbytes(numel, module.w_bits),), "U8"), "weight_scale": ((out, n_groups), "F32")}
    if not module.symmetric:
        spec["weight_zero_point"] = ((out, n_groups), "U8")
    if module.a_bits is not None:
        spec["input_scale"] = ((), "F32")
        spec["input_zero_point"] = ((), "I32")
    return spec


def read_tensor_specs(files: Iterable[str | os.PathLike]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Key -> (shape, dtype) from safetensors headers, without reading the data."""
    from safetensors import SafetensorError, safe_open

    specs = {}
    for f in files:
        if not str(f).endswith(".safetensors"):
            continue
        try:
            with safe_open(str(f), framework="pt") as handle:
                for key in handle.keys():
                    sl = handle.get_slice(key)
                    specs[key] = (tuple(sl.get_shape()), sl.get_dtype())
        except SafetensorError as e:
            raise ValueError(
                f"{f} is not a readable safetensors file ({e}); it is truncated or corrupt: save or "
                "download the checkpoint again"
            ) from None
    return specs


def check_checkpoint_tensors(model: nn.Module, specs: Mapping[str, tuple[tuple[int, ...], str]]) -> None:
    """Raise, naming the layer, when checkpoint tensors do not fit the packed layers built from the policy."""
    layers = packed_layers(model)
    ckpt_packed = {k[: -len(".weight_packed")] for k in specs if k.endswith(".weight_packed")}
    seen = set()
    for name, module in layers.items():
        where = ckpt_layer = unique_match(name, ckpt_packed)
        bits = f"{module.w_bits}-bit weight {list(module.weight_shape)}"
        if ckpt_layer is None:
            floats = [k for k in specs if k.endswith("." + name + ".weight") or k == name + ".weight"]
            got = f"; it holds a float {floats[0]!r} instead" if floats and specs[floats[0]][0] != (1,) else ""
            raise ValueError(
                f"checkpoint does not match its policy: layer {name!r} ({bits}) has no packed tensors{got}. "
                "The config.json policy and model.safetensors come from different saves; re-save the model."
            )
        seen.add(ckpt_layer)
        for suffix, (shape, dtype) in expected_tensors(module).items():
            key = f"{where}.{suffix}"
            if key not in specs:
                raise ValueError(f"checkpoint does not match its policy: layer {name!r} ({bits}) lacks {suffix!r}")
            got_shape, got_dtype = specs[key]
            if tuple(got_shape) != tuple(shape) or got_dtype != dtype:
                raise ValueError(
                    f"checkpoint does not match its policy: layer {name!r} stores {suffix} as {got_dtype} "
                    f"{list(got_shape)}, but a {bits} (group_size={module.group_size}, "
                    f"{'symmetric' if module.symmetric else 'asymmetric'}) needs {dtype} {list(shape)}. "
                    "Its bits or grouping in config.json differ from the saved tensors."
                )
        stored = {k[len(where) + 1 :] for k in specs if k.startswith(where + ".") and "." not in k[len(where) + 1 :]}
        allowed = set(expected_tensors(module)) | {GUARD} | ({"bias"} if module.bias is not None else set())
        scheme = (
            f"{'symmetric' if module.symmetric else 'asymmetric'}, "
            f"{'float activations' if module.a_bits is None else f'{module.a_bits}-bit activations'}"
        )
        if stored - allowed:
            raise ValueError(
                f"checkpoint does not match its policy: layer {name!r} stores {sorted(stored - allowed)}, which its "
                f"config.json scheme ({bits}, {scheme}) does not have; the config.json settings (symmetric, a_bits, "
                "bias) differ from the saved tensors. Re-save the model instead of editing config.json."
            )
        if module.bias is not None:
            if "bias" not in stored:
                raise ValueError(f"checkpoint does not match its policy: layer {name!r} ({bits}) lacks 'bias'")
            if tuple(specs[f"{where}.bias"][0]) != (module.bias.shape[0],):
                raise ValueError(
                    f"checkpoint does not match its policy: layer {name!r} stores bias as "
                    f"{list(specs[f'{where}.bias'][0])}, but the layer needs [{module.bias.shape[0]}]"
                )
    extra = sorted(ckpt_packed - seen)
    if extra:
        raise ValueError(
            f"checkpoint has packed tensors for layers {extra[:5]} that its policy does not list; "
            "the config.json policy and model.safetensors come from different saves"
        )


# ----------------------------------------------------------------------------- state dicts
def packed_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict plus the one-byte guard per packed layer (see module docstring)."""
    state = model.state_dict()
    for name in packed_layers(model):
        state[f"{name}.{GUARD}" if name else GUARD] = torch.zeros(1, dtype=torch.uint8)
    state[IMPORT_HINT_KEY] = torch.zeros(1, dtype=torch.uint8)
    return state


def strip_guards(state: Mapping[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    guards = {f"{n}.{GUARD}" for n in packed_layers(model)} | {IMPORT_HINT_KEY}
    return {k: v for k, v in state.items() if k not in guards}


# ----------------------------------------------------------------------------- atomic checkpoint writes
# The files that decide what loads go in last (transformers reads config.json; `load_quantized` reads
# infoq_config.json first), so while the others are renamed the folder still describes the old files.
DECIDING_FILES = ("config.json", INFOQ_CONFIG_NAME)


def atomic_checkpoint(target: str | os.PathLike):
    """`atomic_save.atomic_checkpoint` with this format's deciding files: whole or nothing, the previous
    checkpoint kept until the new one is complete."""
    return atomic_save.atomic_checkpoint(target, DECIDING_FILES)


def write_safetensors(state: Mapping[str, torch.Tensor], path: str | os.PathLike, metadata: Mapping | None = None):
    from safetensors.torch import save_file

    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    # Tied tensors (e.g. embeddings / lm_head) share storage: store each once, and name its aliases in
    # the header so the loader fills them from the stored key.
    kept, aliases = {}, {}
    for k, v in list(tensors.items()):
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), v.numel(), v.dtype, tuple(v.shape))
        if v.numel() and key in kept:
            aliases[k] = kept[key]
            del tensors[k]
        else:
            kept[key] = k
    header = {"format": "pt", **(metadata or {})}
    if aliases:
        header[TIED_METADATA] = json.dumps(aliases)
    save_file(tensors, str(path), metadata=header)


def read_safetensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A file written by `write_safetensors`, tied aliases filled in (they share the stored tensor)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as handle:
        raw = (handle.metadata() or {}).get(TIED_METADATA, "{}")
        stored_keys = set(handle.keys())
    try:
        aliases = json.loads(raw)
    except json.JSONDecodeError:
        aliases = None
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise ValueError(
            f"{path}: its {TIED_METADATA!r} header entry is not a JSON object of tensor names; the "
            "file is corrupt or was edited: save the checkpoint again"
        )
    for alias, stored in aliases.items():
        if alias in stored_keys:
            raise ValueError(
                f"{path}: its {TIED_METADATA!r} header names the stored tensor {alias!r} as a copy of "
                f"{stored!r}, which would overwrite it; the file was edited: save the checkpoint again"
            )
        if stored not in stored_keys:
            raise ValueError(
                f"{path}: its {TIED_METADATA!r} header ties {alias!r} to {stored!r}, which the file "
                "does not store; the file is corrupt or was edited: save the checkpoint again"
            )
    state = load_file(str(path))
    for alias, stored in aliases.items():
        state[alias] = state[stored]
    return state


def read_json_object(path: Path) -> dict:
    """A JSON object file; ValueError naming the file when it is not one."""
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(
            f"{path} is not valid JSON ({e}); the checkpoint is corrupt or was edited: save or download it again"
        ) from None
    if not isinstance(data, dict):
        raise ValueError(
            f"{path} holds a JSON {type(data).__name__}, not an object; save or download the checkpoint again"
        )
    return data


def read_json(path: Path) -> dict:
    """The JSON object in `path`; ValueError naming the file when it is not valid JSON."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e})") from None


def read_infoq_config(directory: str | os.PathLike):
    """The `InfoQConfig` stored beside a checkpoint (infoq_config.json, else config.json's quantization_config)."""
    directory = Path(directory)
    path = directory / INFOQ_CONFIG_NAME
    if path.is_file():
        return InfoQConfig.from_dict(read_json_object(path))
    cfg = directory / "config.json"
    if cfg.is_file():
        data = read_json_object(cfg).get("quantization_config")
        if isinstance(data, dict) and data.get("quant_method") == "infoq":
            return InfoQConfig.from_dict(data)
    raise FileNotFoundError(
        f"{directory} holds no {INFOQ_CONFIG_NAME} nor an infoq config.json: not an infoq checkpoint"
    )


def save_packed(model: nn.Module, directory: str | os.PathLike, config, *, write_extra=None) -> Path:
    """Atomically write model.safetensors + infoq_config.json (+ whatever `write_extra(tmp_dir)` adds)."""
    with atomic_checkpoint(directory) as tmp:
        write_packed(model, tmp, config, write_extra=write_extra)
    return Path(directory)


def write_packed(model: nn.Module, folder: Path, config, *, write_extra=None) -> None:
    """`save_packed`'s files, written straight into `folder` (a staging folder the caller's transaction owns)."""
    write_safetensors(
        packed_state_dict(model),
        folder / WEIGHTS_NAME,
        {"quant_method": "infoq", LAYERS_METADATA: json.dumps(packed_layer_shapes(model))},
    )
    (folder / INFOQ_CONFIG_NAME).write_text(json.dumps(config.to_dict(), indent=1))
    if write_extra is not None:
        write_extra(folder)


def load_packed_into(model: nn.Module, directory: str | os.PathLike, config) -> nn.Module:
    """Build packed layers from `config.policy` on a float `model`, check and load the tensors strictly."""
    directory = Path(directory)
    weights = directory / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing; the checkpoint is incomplete")
    build_packed_modules(model, config.policy, config.scheme)
    check_checkpoint_tensors(model, read_tensor_specs([weights]))
    verify_safetensors(weights)
    state = strip_guards(read_safetensors(weights), model)
    model.load_state_dict(state, strict=True)
    return model
