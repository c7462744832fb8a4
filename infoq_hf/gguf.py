"""Export a packed Llama-architecture causal LM as a GGUF file that llama.cpp runs as is.

Every packed layer becomes one llama.cpp tensor type (`gguf_types` says which and why):
- "exact": its own codes re-blocked into a 32-block type (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0), so the file
  holds the weights the allocation judged; the only change is each group scale (and Q4_1/Q5_1's min
  -z*s) written in float16, as those formats store them;
- "requantized (gguf)": the dequantized weight rounded by the `gguf` package's numpy quantizer (the
  32-block types; used for a layer with no exact container, e.g. asymmetric 8 bits);
- "requantized (llama.cpp)": the dequantized weight rounded by llama.cpp's own `ggml_quantize_chunk`
  (K-quants, which the `gguf` package only dequantizes), from a libggml the caller points to.
Float tensors keep float: norms in F32, matrices in `float_type` (F16 by default). Names and
metadata are llama.cpp's (the `gguf` package's tensor map for LLM_ARCH_LLAMA; q/k rows permuted
to llama.cpp's rotary layout as its converter does). The tokenizer and chat template are copied from
a GGUF file or built from a Hugging Face folder by the `gguf` package's vocab helpers. The key
`infoq.policy` holds, as a JSON string, every packed layer's width, grouping, tensor name, type and
rounding.

The `gguf` package is an optional dependency, imported where it is used.
"""

from __future__ import annotations

import ctypes
import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from . import integrations  # noqa: F401  (registers quant_method "infoq")
from .gguf_types import GGML_TYPES, exact_type, ggml_type, tensor_nbytes, width_type
from .quant.apply import packed_layers
from .quant.modules import QuantConv2d, QuantEmbedding, QuantLinear, QuantTiedLinear
from .version import __version__

POLICY_KEY = "infoq.policy"
GGUF_PACKAGE_TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")  # what gguf.quants can quantize among GGML_TYPES
GGML_LIBRARY_ENV = "INFOQ_GGML_LIBRARY"


def _gguf():
    try:
        import gguf
    except ImportError as exc:
        raise ImportError("the GGUF export needs the 'gguf' package: pip install gguf") from exc
    return gguf


# ----------------------------------------------------------------------------- exact re-blocking
def _half(values: torch.Tensor, what: str) -> np.ndarray:
    half = values.to(torch.float16)
    if not torch.isfinite(half).all():
        raise ValueError(f"{what} exceeds float16's range (65504); GGUF's 32-block types store it in float16")
    return half.numpy().view(np.uint8).reshape(*half.shape, 2)


def _nibbles(q: np.ndarray) -> np.ndarray:
    """Blocks [n, 32] of 4-bit values -> [n, 16] bytes: byte j holds value j (low) and j + 16 (high)."""
    return (q[:, :16] & 0x0F) | ((q[:, 16:] & 0x0F) << 4)


def _high_bits(q: np.ndarray) -> np.ndarray:
    """Blocks [n, 32] of 5-bit values -> [n, 4] bytes: bit j of the little-endian uint32 is value j's bit 4."""
    return np.packbits((q >> 4) & 1, axis=-1, bitorder="little")


def reblock_codes(layer: QuantLinear, type_name: str) -> np.ndarray:
    """A packed layer's codes in the 32-block type `type_name` (one of `exact_type`'s answers for it), as
    uint8 [rows, row_bytes]. Each block of 32 lies in one of our groups and takes that group's scale."""
    rows, cols = layer.weight_shape
    codes = layer.codes().reshape(rows, cols).to(torch.int16)
    groups = layer.weight_scale.shape[1]
    per_block = lambda t: t.repeat_interleave(cols // groups // 32, dim=1).reshape(-1)  # noqa: E731
    scale = per_block(layer.weight_scale.float())
    if layer.symmetric:
        q = codes - (1 << (layer.w_bits - 1))
    else:
        zero = per_block(layer.weight_zero_point.to(torch.int16)).reshape(-1, 1)
        q = codes if type_name in ("Q4_1", "Q5_1") else codes.reshape(-1, 32) - zero
    q = q.reshape(-1, 32).numpy()
    d = _half(scale, f"a scale of {type_name}")
    if type_name == "Q8_0":
        blocks = [d, q.astype(np.int8).view(np.uint8)]
    elif type_name == "Q4_0":
        blocks = [d, _nibbles((q + 8).astype(np.uint8))]
    elif type_name == "Q5_0":
        u = (q + 16).astype(np.uint8)
        blocks = [d, _high_bits(u), _nibbles(u)]
    elif type_name in ("Q4_1", "Q5_1"):
        m = _half(-zero.reshape(-1).float() * scale, f"a min of {type_name}")
        u = q.astype(np.uint8)
        blocks = [d, m, _nibbles(u)] if type_name == "Q4_1" else [d, m, _high_bits(u), _nibbles(u)]
    else:
        raise ValueError(f"{type_name} is not a 32-block type our codes re-block into")
    out = np.concatenate(blocks, axis=-1)
    return out.reshape(rows, cols // 32 * GGML_TYPES[type_name].block_bytes)


# ----------------------------------------------------------------------------- requantizing
def find_ggml_library(library: str | os.PathLike | None = None) -> Path:
    """libggml-base (the library holding `ggml_quantize_chunk`): the given file or folder, else
    $INFOQ_GGML_LIBRARY, else the one inside an importable llama_cpp (llama-cpp-python)."""
    candidates = []
    for where in (library, os.environ.get(GGML_LIBRARY_ENV)):
        if where:
            where = Path(where)
            found = sorted(where.glob("libggml-base.*")) + sorted(where.glob("libggml.*"))
            candidates += [where] if where.is_file() else found
    if not candidates and library is None:
        try:
            import llama_cpp

            lib_dir = Path(llama_cpp.__file__).parent / "lib"
            candidates = sorted(lib_dir.glob("libggml-base.*")) + sorted(lib_dir.glob("libggml.*"))
        except ImportError:
            pass
    if not candidates:
        raise ValueError(
            "K-quant types are rounded by llama.cpp's own quantizer: pass ggml_library= (or set "
            f"${GGML_LIBRARY_ENV}) to libggml-base.so, e.g. llama_cpp/lib/ of a llama-cpp-python install "
            "(benchmarks/setup_llamacpp.sh builds one), or choose a 32-block type (Q4_0 ... Q8_0)"
        )
    return candidates[0]


def llamacpp_quantize(weight: np.ndarray, type_name: str, library: str | os.PathLike | None = None) -> np.ndarray:
    """float32 [rows, cols] -> uint8 [rows, row_bytes] in `type_name`, by llama.cpp's `ggml_quantize_chunk`
    (no importance matrix)."""
    t = ggml_type(type_name)
    lib = ctypes.CDLL(str(find_ggml_library(library)))
    lib.ggml_quantize_requires_imatrix.restype = ctypes.c_bool  # a C bool: only the low byte is set
    lib.ggml_quantize_requires_imatrix.argtypes = [ctypes.c_int]
    if lib.ggml_quantize_requires_imatrix(t.id):
        raise ValueError(f"{t.name} needs an importance matrix, which this export does not compute")
    quantize = lib.ggml_quantize_chunk
    quantize.restype = ctypes.c_size_t
    quantize.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
    ]
    src = np.ascontiguousarray(weight, dtype=np.float32)
    rows, cols = src.shape
    out = np.zeros((rows, tensor_nbytes(t.name, src.shape) // rows), dtype=np.uint8)
    written = quantize(t.id, src.ctypes.data, out.ctypes.data, 0, rows, cols, None)
    if written != out.nbytes:
        raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes for {t.name} {src.shape}, expected {out.nbytes}")
    return out


def _requantize(weight: np.ndarray, type_name: str, library) -> tuple[np.ndarray, str]:
    if type_name in GGUF_PACKAGE_TYPES:
        gguf = _gguf()
        return gguf.quants.quantize(weight, gguf.GGMLQuantizationType[type_name]), "requantized (gguf)"
    return llamacpp_quantize(weight, type_name, library), "requantized (llama.cpp)"


# ----------------------------------------------------------------------------- the model
def _check_model(model: nn.Module) -> None:
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) != "llama" or not hasattr(model, "lm_head"):
        kind = getattr(config, "model_type", type(model).__name__)
        raise ValueError(
            f"the GGUF export writes Llama-architecture causal LMs (LlamaForCausalLM); got {kind!r}. "
            "Use export_compressed_tensors or the infoq checkpoint for other models"
        )
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") != "default":
        raise ValueError(f"rope type {rope.get('rope_type')!r} is not written by this export (default rope only)")
    for name, layer in packed_layers(model).items():
        if isinstance(layer, QuantConv2d) or getattr(layer, "transposed_source", False):
            raise ValueError(f"layer {name!r} is not a Linear/Embedding; a Llama GGUF holds neither")
        if layer.a_bits is not None:
            raise ValueError(
                f"layer {name!r} quantizes its inputs (a_bits={layer.a_bits}); llama.cpp runs "
                "weight-only types. Re-quantize with a_bits=None"
            )
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, QuantLinear)) and getattr(m, "bias", None) is not None:
            raise ValueError(f"layer {name!r} has a bias; the Llama GGUF layout this export writes has none")


def _rope_row_order(rows: int, heads: int) -> np.ndarray:
    """llama.cpp's converter permutes q/k rows from HF's rotate-half layout to interleaved pairs."""
    return np.arange(rows).reshape(heads, 2, rows // heads // 2).swapaxes(1, 2).reshape(-1)


def _float_array(weight: torch.Tensor, type_name: str) -> np.ndarray:
    return weight.detach().to(torch.float32 if type_name == "F32" else torch.float16).cpu().numpy()


def _tensors(model: nn.Module, types, float_type: str, library):
    """(gguf name, array, ggml type name, policy entry or None) for every weight llama.cpp loads."""
    gguf = _gguf()
    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    packed = packed_layers(model)
    unknown = set(types) - set(packed) - {n for n, _ in model.named_modules()}
    if unknown:
        raise ValueError(f"types= names layers the model does not have: {sorted(unknown)}")
    tied_float = isinstance(model.lm_head, nn.Linear) and model.lm_head.weight is model.get_input_embeddings().weight
    for name, module in model.named_modules():
        if isinstance(module, QuantTiedLinear) or (module is model.lm_head and tied_float):
            continue  # llama.cpp reuses token_embd when output.weight is absent
        weight = module._parameters.get("weight") if not isinstance(module, QuantLinear) else None
        if not isinstance(module, QuantLinear) and weight is None:
            continue
        gguf_name = names.get_name(f"{name}.weight", try_suffixes=(".weight",))
        if gguf_name is None:
            raise ValueError(
                f"tensor {name}.weight has no llama.cpp name in LLM_ARCH_LLAMA; the export cannot place it"
            )
        leaf = name.rpartition(".")[2]
        heads = {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}.get(leaf)
        if isinstance(module, QuantLinear):  # QuantEmbedding included
            yield (gguf_name, *_packed_tensor(name, module, types.get(name), library, heads))
        elif weight.dim() == 1:
            yield gguf_name, _float_array(weight, "F32"), "F32", None
        else:
            w = weight.detach()
            if heads:
                w = w[torch.from_numpy(_rope_row_order(w.shape[0], heads))]
            requested = types.get(name, float_type)
            if requested in ("F32", "F16"):
                yield gguf_name, _float_array(w, requested), requested, None
            else:
                array, how = _requantize(w.float().numpy(), requested, library)
                yield gguf_name, array, requested, {"type": requested, "rounding": how, "w_bits": None}


def _packed_tensor(name: str, layer: QuantLinear, requested: str | None, library, heads: int | None):
    rows, cols = layer.weight_shape
    exact = exact_type(layer.w_bits, layer.symmetric, layer.group_size, cols)
    target = ggml_type(requested).name if requested else exact or width_type(layer.w_bits, cols)
    if target in ("F16", "F32"):
        array, how = _float_array(layer.dequantized_weight(), target), "dequantized"
    elif target == exact:
        array, how = reblock_codes(layer, target), "exact"
    else:
        array, how = _requantize(layer.dequantized_weight().numpy(), target, library)
    if heads:
        array = array[_rope_row_order(rows, heads)]
    group = cols if layer.group_size is None else layer.group_size
    entry = {
        "w_bits": layer.w_bits,
        "group_size": group,
        "symmetric": layer.symmetric,
        "type": target,
        "rounding": how,
        "embedding": isinstance(layer, QuantEmbedding),
    }
    return array, target, entry


def _write_hparams(writer, model: nn.Module) -> None:
    c = model.config
    rope = getattr(c, "rope_parameters", None) or {}
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    writer.add_name(getattr(c, "name_or_path", "") or "infoq model")
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_block_count(c.num_hidden_layers)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_freq_base(float(getattr(c, "rope_theta", None) or rope.get("rope_theta", 10000.0)))
    writer.add_rope_dimension_count(head_dim)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_vocab_size(c.vocab_size)


# ----------------------------------------------------------------------------- tokenizer
def _copy_tokenizer_from_gguf(writer, path: Path) -> int:
    gguf = _gguf()
    reader = gguf.GGUFReader(path)
    copied = 0
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
        copied += 1
    if "tokenizer.ggml.tokens" not in reader.fields:
        raise ValueError(f"{path} holds no tokenizer (no tokenizer.ggml.tokens); pass another GGUF or an HF folder")
    return len(reader.fields["tokenizer.ggml.tokens"].data)


def _tokenizer_from_folder(writer, folder: Path, pre: str):
    gguf = _gguf()
    try:
        vocab = gguf.vocab.BpeVocab(folder)
    except (FileNotFoundError, KeyError) as exc:
        raise ValueError(
            f"{folder} has no byte-level BPE tokenizer (tokenizer.json of type BPE with a ByteLevel "
            f"decoder, or vocab.json + merges.txt), the one kind this export converts ({exc}); pass "
            "tokenizer= a GGUF file that holds the model's tokenizer"
        ) from None
    tokens, types = [], []
    for text, _score, kind in vocab.all_tokens():
        tokens.append(text.decode("utf-8") if isinstance(text, bytes) else text)
        types.append(int(kind))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    special = gguf.vocab.SpecialVocab(folder, load_merges=True, n_vocab=len(tokens))
    return tokens, types, special


def _write_tokenizer(writer, tokenizer: Path, vocab_size: int, pre: str) -> None:
    if tokenizer.is_file():
        n = _copy_tokenizer_from_gguf(writer, tokenizer)
    elif tokenizer.is_dir():
        tokens, types, special = _tokenizer_from_folder(writer, tokenizer, pre)
        n = len(tokens)
        pad = vocab_size - n  # rows of the embedding the tokenizer never emits, as llama.cpp's converter pads
        tokens += [f"[PAD{i}]" for i in range(n, vocab_size)]
        types += [int(_gguf().TokenType.UNUSED)] * max(pad, 0)
        writer.add_token_list(tokens)
        writer.add_token_types(types)
        special.add_to_gguf(writer, quiet=True)
        n = len(tokens)
    else:
        raise FileNotFoundError(f"tokenizer source {tokenizer} does not exist; pass a GGUF file or an HF folder")
    if n != vocab_size:
        raise ValueError(f"the tokenizer from {tokenizer} has {n} tokens but the model's embedding {vocab_size} rows")


# ----------------------------------------------------------------------------- the export
def export_gguf(
    src: str | os.PathLike | nn.Module,
    out_file: str | os.PathLike,
    *,
    tokenizer: str | os.PathLike | None = None,
    types: dict[str, str] | None = None,
    float_type: str = "F16",
    tokenizer_pre: str = "default",
    ggml_library: str | os.PathLike | None = None,
    require_packed: bool = True,
) -> Path:
    """Write the packed model (or the infoq checkpoint folder `src`) to the new GGUF file `out_file`.

    tokenizer: a GGUF file whose `tokenizer.*` keys are copied (e.g. the GGUF the model came from), or
    an HF folder with a byte-level BPE tokenizer; default: `src` when it is a folder. tokenizer_pre:
    llama.cpp's pre-tokenizer name written for an HF folder (e.g. "smollm", "llama-bpe"). types:
    {layer name: llama.cpp type} overriding a layer's type (K-quants need `ggml_library`, see
    `find_ggml_library`). float_type: F16 or F32 for float matrices. require_packed=False also writes a
    model without packed layers (a float GGUF, e.g. the input of llama.cpp's own quantizer). Refuses to
    overwrite a file."""
    _gguf()
    out_file = Path(out_file)
    if out_file.exists():
        raise ValueError(f"{out_file} exists; choose a new file name (the export overwrites nothing)")
    if float_type not in ("F16", "F32"):
        raise ValueError(f"float_type must be F16 or F32, got {float_type!r}")
    if isinstance(src, nn.Module):
        model = src
    else:
        model = load_checkpoint_folder(src)
        tokenizer = src if tokenizer is None else tokenizer
    if tokenizer is None:
        raise ValueError("pass tokenizer= (a GGUF file or an HF folder): llama.cpp cannot run a GGUF without one")
    _check_model(model)
    if require_packed and not packed_layers(model):
        raise ValueError("the model has no packed layers; quantize it first (infoq_hf.quantize_model)")
    gguf = _gguf()
    tmp = out_file.with_name(f".{out_file.name}.{os.getpid()}.tmp")
    writer = gguf.GGUFWriter(tmp, "llama")
    try:
        _write_hparams(writer, model)
        _write_tokenizer(writer, Path(tokenizer), model.config.vocab_size, tokenizer_pre)
        policy = {}
        for gguf_name, array, type_name, entry in _tensors(model, dict(types or {}), float_type, library=ggml_library):
            raw = None if type_name in ("F16", "F32") else gguf.GGMLQuantizationType[type_name]
            writer.add_tensor(gguf_name, array, raw_dtype=raw)
            if entry is not None:
                policy[gguf_name] = entry
        writer.add_string(POLICY_KEY, json.dumps(policy, sort_keys=True))
        writer.add_string("infoq.version", __version__)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        os.link(tmp, out_file)  # fails rather than replace a file created meanwhile
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    return out_file


def load_checkpoint_folder(directory: str | os.PathLike) -> nn.Module:
    """An infoq checkpoint folder (transformers `save_pretrained` of a packed model), loaded with its packed layers."""
    import transformers

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory} has no config.json; pass an infoq checkpoint folder or the packed model")
    return transformers.AutoModelForCausalLM.from_pretrained(directory).eval()


def gguf_summary(path: str | os.PathLike) -> dict:
    """What a GGUF file holds: its size, bytes and weights per tensor type, and the bits per weight of
    the quantized tensors with their scales (the file's real cost, headers aside)."""
    gguf = _gguf()
    reader = gguf.GGUFReader(path)
    by_type: dict[str, dict] = {}
    for t in reader.tensors:
        row = by_type.setdefault(t.tensor_type.name, {"tensors": 0, "weights": 0, "bytes": 0})
        row["tensors"] += 1
        row["weights"] += int(t.n_elements)
        row["bytes"] += int(t.n_bytes)
    quantized = [r for name, r in by_type.items() if name not in ("F32", "F16", "BF16")]
    q_weights, q_bytes = sum(r["weights"] for r in quantized), sum(r["bytes"] for r in quantized)
    return {
        "file_bytes": os.path.getsize(path),
        "types": by_type,
        "quantized_bits_per_weight": 8 * q_bytes / q_weights if q_weights else None,
    }


__all__ = [
    "POLICY_KEY",
    "export_gguf",
    "find_ggml_library",
    "gguf_summary",
    "llamacpp_quantize",
    "load_checkpoint_folder",
    "reblock_codes",
]
