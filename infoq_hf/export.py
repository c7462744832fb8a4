"""Export a packed model as a compressed-tensors `pack-quantized` checkpoint (transformers, vLLM).

The result loads with plain `AutoModelForCausalLM.from_pretrained(out)` and the compressed-tensors
package, without infoq_hf. Each packed layer NAME becomes

    NAME.weight_packed      int32 [out, ceil(in * b / 32)]: each row's codes as one little-endian bit
                            stream (code i at bits [i*b, (i+1)*b)), padded to whole 32-bit words;
    NAME.weight_scale       float32 [out, n_groups] (ours, unchanged);
    NAME.weight_zero_point  int8 [out, n_groups] (asymmetric only): the signed zero points z - 2^(b-1);
    NAME.weight_shape       int64 [2]: (out, in);

and the float tensors are copied as they are. This is the packing of compressed-tensors
COMPRESSED_TENSORS_VERSION (its `pack_to_int32`; the packing of 3/5/6/7 bits changed in 2026,
earlier versions read these files wrongly). The stored integers are the same in both formats:
compressed-tensors keeps signed q = c - 2^(b-1) and its signed zero point zp = z - 2^(b-1), and
stores q + 2^(b-1) = c (and z); its (q - zp) * s is our (c - z) * s, symmetric codes included.

Each distinct (bits, group size, symmetry) becomes one `config_groups` entry whose targets are the
exact layer names; float Linear layers are listed in `ignore`. Symmetric schemes use the "group" /
"channel" strategies, which transformers and vLLM both read. Asymmetric layers have no layout both read:

- target="transformers" (default) writes them as "block" with blocks of one row by one group, which
  stores the zero points unpacked (int8 [out, n_groups]). vLLM has no weight-only scheme for "block".
- target="vllm" writes them as "group" with the zero points packed along the output dimension (int32
  [ceil(out * b / 32), n_groups]), the layout vLLM allocates. transformers 5.25 with compressed-tensors
  0.20.1 cannot load that: it builds the compressed layout on the meta device, where the zero point is
  left unpacked, and refuses the packed tensor's shape; its `dequantize=True` route decompresses every
  dense layer with the first config group's scheme, wrong for a mixed-precision model.
  target="vllm" also checks the whole checkpoint against `vllm_rules` (vLLM 0.33.0's loader and
  kernels) before writing anything and refuses, naming each layer and what to change.

Tokenizer files, the chat template and generation_config.json are copied from the source folder (or
`tokenizer_dir`), so the exported folder runs as it is.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import integrations  # noqa: F401  (registers quant_method "infoq")
from .checkpoint import atomic_checkpoint, write_safetensors
from .quant.apply import packed_layers, quantizable_layers
from .quant.modules import QuantConv2d, QuantEmbedding, QuantLinear
from .quant.packing import pack
from .vllm_rules import VLLM_VERSION, checkpoint_shapes, fused_groups, vllm_problems

COMPRESSED_TENSORS_VERSION = "0.20.1"
TARGETS = ("transformers", "vllm")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "generation_config.json",
)


def pack_rows_int32(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned codes [rows, cols] -> int32 [rows, ceil(cols * bits / 32)], one dense bit stream per row."""
    if sys.byteorder != "little":
        raise RuntimeError("the compressed-tensors export reinterprets bytes as int32 and needs a little-endian host")
    rows, cols = codes.shape
    padded = F.pad(codes, (0, (-cols) % 32))  # 32 codes of b bits fill b whole words: rows start on a word
    words = pack(padded, bits).view(rows, -1).view(torch.int32)
    return words[:, : math.ceil(cols * bits / 32)].contiguous()


def export_compressed_tensors(
    src: str | os.PathLike | nn.Module,
    out_dir: str | os.PathLike,
    *,
    target: str = "transformers",
    kernels: str = "any",
    tokenizer_dir: str | os.PathLike | None = None,
) -> Path:
    """Write the packed model (or the infoq checkpoint folder `src`) to `out_dir` in compressed-tensors'
    `pack-quantized` format, atomically. Raises, naming the layer and the alternatives, for what the
    format cannot hold.

    target: "transformers" (loads with `AutoModelForCausalLM.from_pretrained`) or "vllm" (the layout vLLM
        reads; refused before writing, with every reason, unless `vllm_rules` accepts it; `kernels`: "any"
        or "marlin", see `vllm_rules`). The two differ only for asymmetric layers (module docstring).
    tokenizer_dir: folder to copy the tokenizer files from (default: `src` when it is a folder)."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {list(TARGETS)}, got {target!r}")
    model = _load(src) if not isinstance(src, nn.Module) else src
    if tokenizer_dir is None and not isinstance(src, nn.Module):
        tokenizer_dir = src
    layers = packed_layers(model)
    if not layers:
        raise ValueError("the model has no packed layers; quantize it first (infoq_hf.quantize_model)")
    for name, layer in layers.items():
        _check_exportable(name, layer)
    state = {k: v for k, v in model.state_dict().items() if not _is_packed_buffer(k, layers)}
    groups: dict[tuple, list[str]] = {}
    for name, layer in layers.items():
        out, fan_in = layer.weight_shape
        codes = layer.codes().reshape(out, fan_in)
        state[f"{name}.weight_packed"] = pack_rows_int32(codes, layer.w_bits)
        state[f"{name}.weight_scale"] = layer.weight_scale
        state[f"{name}.weight_shape"] = torch.tensor([out, fan_in], dtype=torch.int64)
        if not layer.symmetric:
            if target == "vllm":  # packed along the output dimension: one bit stream per group column
                zero_points = pack_rows_int32(layer.weight_zero_point.t(), layer.w_bits)
                state[f"{name}.weight_zero_point"] = zero_points.t().contiguous()
            else:
                offset = 1 << (layer.w_bits - 1)
                state[f"{name}.weight_zero_point"] = (layer.weight_zero_point.to(torch.int16) - offset).to(torch.int8)
        group_size = fan_in // layer.weight_scale.shape[1]
        groups.setdefault((layer.w_bits, group_size, layer.symmetric, fan_in), []).append(name)
    ignore = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in layers]
    config = model.config.to_dict() if hasattr(model, "config") else {}
    config["quantization_config"] = compressed_tensors_config(groups, ignore, packed_zero_points=target == "vllm")
    if target == "vllm":
        problems = vllm_problems(config["quantization_config"], checkpoint_shapes(state), kernels)
        if problems:
            raise ValueError(
                f"vLLM {VLLM_VERSION} would not run this export ({len(problems)} problem(s)), "
                "nothing written:\n- " + "\n- ".join(problems)
            )
    with atomic_checkpoint(out_dir) as tmp:
        write_safetensors(state, tmp / "model.safetensors", {"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=1, default=str))
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.save_pretrained(tmp)
        copy_tokenizer_files(tokenizer_dir, tmp)
    return Path(out_dir)


def copy_tokenizer_files(src_dir, out_dir) -> list[str]:
    """Copy the tokenizer, chat template and generation config files that `src_dir` has (TOKENIZER_FILES)
    into `out_dir`; returns the names copied. None copies nothing."""
    if src_dir is None:
        return []
    src_dir = Path(src_dir)
    if not src_dir.is_dir():
        raise FileNotFoundError(f"tokenizer folder {src_dir} does not exist; pass the folder holding tokenizer.json")
    copied = [f for f in TOKENIZER_FILES if (src_dir / f).is_file()]
    for f in copied:
        shutil.copyfile(src_dir / f, Path(out_dir) / f)
    return copied


def fused_projection_groups(names) -> list[tuple[str, ...]]:
    """Groups of layer names vLLM fuses into one matmul (q/k/v, gate/up of one block), which therefore must
    share one scheme: pass them as `allocate(..., tie=fused_projection_groups(table.layers))`. `names`: layer
    names, or a model (its quantizable layers). See also `vllm_rules.vllm_allocation_constraints`."""
    if isinstance(names, nn.Module):
        names = quantizable_layers(names)
    return fused_groups(names)


def compressed_tensors_config(
    groups: dict[tuple, list[str]], ignore: list[str], packed_zero_points: bool = False
) -> dict:
    """The `quantization_config` of a pack-quantized checkpoint: one scheme per (bits, group size, symmetric,
    input width); the input width matters only when a group spans the whole row (per channel).
    packed_zero_points: asymmetric schemes as "group"/"channel" (zero points packed, vLLM's layout) rather
    than one-row "block"s (transformers' layout)."""
    config_groups = {}
    for i, ((bits, group_size, symmetric, fan_in), targets) in enumerate(
        sorted(groups.items(), key=lambda kv: str(kv[0]))
    ):
        weights = {"num_bits": bits, "type": "int", "symmetric": symmetric, "dynamic": False}
        if not symmetric and not packed_zero_points:  # see the module docstring: blocks of one row by one group
            weights.update(strategy="block", block_structure=[1, group_size], zp_dtype="torch.int8")
        elif group_size == fan_in:
            weights.update(strategy="channel")
        else:
            weights.update(strategy="group", group_size=group_size)
        config_groups[f"group_{i}"] = {
            "targets": sorted(targets),
            "weights": weights,
            "input_activations": None,
            "output_activations": None,
            "format": "pack-quantized",
        }
    return {
        "quant_method": "compressed-tensors",
        "format": "pack-quantized",
        "quantization_status": "compressed",
        "config_groups": config_groups,
        "ignore": sorted(ignore),
        "kv_cache_scheme": None,
        "version": COMPRESSED_TENSORS_VERSION,
    }


def _check_exportable(name: str, layer: nn.Module) -> None:
    if isinstance(layer, QuantEmbedding):
        raise ValueError(
            f"layer {name!r} is a packed embedding; compressed-tensors quantizes Linear layers only. "
            "Re-quantize without quantize_embeddings (the embedding stays float) or use the infoq "
            "checkpoint"
        )
    if isinstance(layer, QuantConv2d):
        raise ValueError(
            f"layer {name!r} is a packed Conv2d; the compressed-tensors export holds Linear layers only. "
            "Keep convolutions float (skip_modules / modules_to_not_convert) or use the infoq checkpoint"
        )
    if isinstance(layer, QuantLinear) and layer.transposed_source:
        raise ValueError(
            f"layer {name!r} replaces a transformers Conv1D (GPT-2 style, weight stored [in, out]); "
            "compressed-tensors targets nn.Linear. Keep it float or use the infoq checkpoint"
        )
    if layer.a_bits is not None:
        raise ValueError(
            f"layer {name!r} quantizes its input activations (a_bits={layer.a_bits}, static per-tensor "
            "asymmetric); the export writes weight-only schemes. Re-quantize with float activations "
            "(a_bits=None) or use the infoq checkpoint"
        )


def _is_packed_buffer(key: str, layers) -> bool:
    owner, _, leaf = key.rpartition(".")
    return owner in layers and leaf in ("weight_packed", "weight_scale", "weight_zero_point")


def _load(directory) -> nn.Module:
    """An infoq checkpoint folder written by transformers' `save_pretrained`, in the dtype it was saved in."""
    import transformers

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(
            f"{directory} has no config.json; pass a transformers infoq checkpoint folder or the packed model itself"
        )
    config = transformers.AutoConfig.from_pretrained(directory)
    quant = getattr(config, "quantization_config", None) or {}
    quant = quant if isinstance(quant, dict) else quant.to_dict()
    if quant.get("quant_method") != "infoq":
        raise ValueError(
            f"{directory} is not an infoq checkpoint (its config.json has no infoq quantization_config); "
            "save one with from_pretrained(..., quantization_config=InfoQConfig(...)).save_pretrained, "
            "or pass the packed model itself"
        )
    architectures = getattr(config, "architectures", None) or []
    model_class = getattr(transformers, architectures[0], None) if architectures else None
    if model_class is None:
        raise ValueError(
            f"{directory}/config.json names no transformers architecture ({architectures}); load the "
            "model yourself and pass it to export_compressed_tensors"
        )
    return model_class.from_pretrained(directory).eval()
