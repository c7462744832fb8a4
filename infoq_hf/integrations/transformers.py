"""`InfoQQuantizer`: the transformers hooks for quant_method "infoq" (the work lives elsewhere).

- Quantize on load (`from_pretrained(float_model, quantization_config=InfoQConfig(...))`): the
  float weights load as usual; after loading, `pipeline.quantize_with_infoq` calibrates,
  searches, allocates and packs the whole model (the search needs every layer in float, so
  nothing is quantized tensor by tensor), then the found policy goes into the config.
- Pre-quantized (`config.json` holds an infoq `quantization_config`): before loading, each
  layer of the stored policy becomes an empty packed module with its own bits, the checkpoint's
  tensor headers are checked against them, then transformers loads the packed buffers by name.
- Precedence: a pre-quantized checkpoint's stored policy wins. A passed `InfoQConfig` whose
  policy differs raises; passed search settings are ignored (transformers warns).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import re
import sys
from pathlib import Path

import torch
from safetensors import safe_open
from transformers.quantizers import HfQuantizer
from transformers.quantizers import auto as _auto

from ..checkpoint import (
    GUARD,
    IMPORT_HINT_KEY,
    build_packed_modules,
    check_checkpoint_tensors,
    packed_state_dict,
    read_tensor_specs,
)
from ..config import QUANT_METHOD, InfoQConfig
from ..integrity import DIGEST_METADATA, header_json_object, tensor_digests, verify_checkpoint_files
from ..origin import float_model_origin
from ..pipeline import QuantizationResult, quantize_with_infoq
from ..quant.apply import cast_float_leftovers, dequantize_model, set_compute_dtype

logger = logging.getLogger("infoq_hf")
SUMMARY_METADATA = "infoq_summary"  # safetensors header key: the run's summary, JSON (read back on load)


class InfoQQuantizer(HfQuantizer):
    """Mixed-precision packed weights (2..8 bits per layer) chosen by InfoQ or given as a policy."""

    requires_calibration = False  # it can quantize a float checkpoint itself

    def __init__(self, quantization_config: InfoQConfig, **kwargs):
        # A copy: the found policy must not leak into the user's config object (it may be reused).
        super().__init__(copy.copy(quantization_config), **kwargs)
        self.modules_to_not_convert: list[str] = []
        self.result = None  # the QuantizationResult of the run (a reloaded checkpoint: its summary, no table)
        self.summary = None  # the run's summary dict, saved in the safetensors header

    def validate_environment(self, *args, **kwargs):
        cfg = self.quantization_config
        if self.pre_quantized and cfg.policy is None:
            raise ValueError(
                "this checkpoint's config.json has an infoq quantization_config without a policy; "
                "it was not saved after quantization. Re-save the quantized model."
            )
        device_map = kwargs.get("device_map")
        if isinstance(device_map, dict) and "disk" in device_map.values() and not self.pre_quantized:
            raise ValueError(
                "quantizing on load with InfoQ needs the whole float model in memory; "
                "a device_map with disk offloading is not supported"
            )

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        cfg = self.quantization_config
        self.modules_to_not_convert = modules_kept_float(model, cfg.modules_to_not_convert, cfg.quantize_embeddings)
        if not self.pre_quantized:
            return model
        built = build_packed_modules(model, cfg.policy, cfg.scheme)
        if checkpoint_files:  # fail before loading, naming the layer, rather than load a wrong model
            refuse_mixed_saves(checkpoint_files)
            specs = read_tensor_specs(checkpoint_files)
            rename = checkpoint_renamer(model, self)
            check_checkpoint_tensors(model, {rename(k): v for k, v in specs.items()})
            verify_checkpoint_files(checkpoint_files, rename)  # every tensor's bytes against its saved digest
        # Some `_init_weights` reach from a parent into its child's `.weight` (GPT-2: `mlp.c_proj.weight`),
        # which a packed layer lacks. A parent holding no tensors of its own has nothing to initialise.
        for name in built:
            parent = model.get_submodule(name.rpartition(".")[0])
            if not any(True for _ in parent.parameters(recurse=False)) and not any(
                True for _ in parent.buffers(recurse=False)
            ):
                parent._is_hf_initialized = True
        # The one-byte format guards (see infoq_hf.checkpoint) are expected, not unexpected, keys.
        guards = {rf"(^|\.){re.escape(name)}\.{GUARD}$" for name in built} | {rf"^{IMPORT_HINT_KEY}$"}
        model._keys_to_ignore_on_load_unexpected = set(model._keys_to_ignore_on_load_unexpected or ()) | guards
        self.summary = stored_summary(checkpoint_files or ())
        return model

    def _process_model_after_weight_loading(
        self, model, tokenizer=None, table=None, accelerator=None, progress=True, **kwargs
    ):
        if self.pre_quantized:
            set_compute_dtype(model, self.quantization_config.compute_dtype)
            if self.summary is not None:  # the run that packed this checkpoint, as its header recorded it
                self.result = QuantizationResult(model, self.quantization_config.policy, None, self.summary)
            return model
        cfg = self.quantization_config
        self.result = quantize_with_infoq(
            model,
            cfg,
            table=table,
            tokenizer=tokenizer,
            skip_modules=self.modules_to_not_convert,
            accelerator=accelerator,
            progress=progress,
        )
        cfg.policy = self.result.policy
        cfg.rounding = self.result.summary["rounding"]  # "auto" made concrete: config.json says what was done
        cfg.clip_search = self.result.summary["clip_search"]
        if self.result.summary["float_dtype"] is not None:  # config.json records the leftovers' dtype
            model.config.dtype = getattr(torch, self.result.summary["float_dtype"])
        source = getattr(model.config, "_name_or_path", None) or None  # the float model: its Hub id and name
        origin = float_model_origin(model, source, read_card=False)
        self.result = dataclasses.replace(self.result, summary={**origin, **self.result.summary})
        self.summary = self.result.summary
        if progress:  # the one line a user sees after the bars, without any logging setup
            print(final_line(self.result.summary), file=sys.stderr, flush=True)
        return model

    def get_state_dict_and_metadata(self, model):
        """The packed state dict, and the header metadata every shard carries: the quant method and the
        run's summary (so `quantization_result` answers after a reload)."""
        state = packed_state_dict(model)
        metadata = {"quant_method": QUANT_METHOD, DIGEST_METADATA: tensor_digests(state)}
        if getattr(self, "summary", None) is not None:
            metadata[SUMMARY_METADATA] = json.dumps(_jsonable(self.summary))
        return state, metadata

    def _dequantize(self, model, dtype=None):
        dequantize_model(model)
        if isinstance(dtype, str):  # a reloaded config.json gives its dtype as a name
            dtype = getattr(torch, dtype)
        # as from_pretrained(dtype=...) casts: runtime buffers (rotary frequencies) keep theirs
        return cast_float_leftovers(model, dtype) if dtype is not None else model

    def is_serializable(self):
        return True

    @property
    def is_trainable(self) -> bool:
        return False

    def param_element_size(self, model, param_name, param):
        return param.element_size()


def refuse_mixed_saves(checkpoint_files) -> None:
    """A folder holding an unsharded `model.safetensors` beside a shard index holds two saves' weights
    (transformers' `save_pretrained` leaves the other form in place); which one loads is not the user's choice."""
    for folder in {Path(f).parent for f in checkpoint_files}:
        if (folder / "model.safetensors").is_file() and (folder / "model.safetensors.index.json").is_file():
            raise ValueError(
                f"{folder} holds both model.safetensors and model.safetensors.index.json: weights of "
                "two different saves. Delete the older of the two (or save again with infoq_hf.save, "
                "which removes the weights of earlier saves)"
            )


def modules_kept_float(model, modules_to_not_convert=None, quantize_embeddings: bool = False) -> list[str]:
    """What stays float: the user's list, else transformers' default (output embeddings, tied and last
    layers, norms), without the input and output embeddings when `quantize_embeddings`."""
    skip = InfoQQuantizer.get_modules_to_not_convert(
        model, modules_to_not_convert, getattr(model, "_keep_in_fp32_modules", None)
    )
    if quantize_embeddings and modules_to_not_convert is None:
        modules = {id(m): n for n, m in model.named_modules()}
        embeddings = {modules.get(id(get())) for get in (model.get_input_embeddings, model.get_output_embeddings)}
        skip = [n for n in skip if n not in embeddings]
    return sorted(skip)


def checkpoint_renamer(model, quantizer):
    """Checkpoint key -> model key under the model's legacy renamings (e.g. ViT's `encoder.layer` ->
    `layers`), which `save_pretrained` applies in reverse; identity where there are none."""
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming, apply_renamings
    except ImportError:  # an older layout of transformers' loading code: names are used as stored
        return lambda key: key
    renamings = [t for t in get_model_conversion_mapping(model, None, quantizer) if isinstance(t, WeightRenaming)]
    return (lambda key: apply_renamings(key, renamings)) if renamings else (lambda key: key)


def quantize_pretrained(
    model, config: InfoQConfig, *, tokenizer=None, table=None, accelerator=None, progress: bool = True
):
    """Quantize a transformers model already loaded in float, in place, exactly as
    `from_pretrained(..., quantization_config=config)` would have (the model is not loaded again);
    returns the `QuantizationResult`. `tokenizer` builds text calibration batches (default: the one
    saved with the model); `table`, a saved search of this model, skips the search; `accelerator`
    splits the work over processes (see `quantize_with_infoq`).
    Afterwards `model.save_pretrained(folder)` writes the packed checkpoint (it reloads with
    `from_pretrained` after `import infoq_hf`); `infoq_hf.save` adds the tokenizer and the model card."""
    if getattr(model, "hf_quantizer", None) is not None:
        raise ValueError("this model is already quantized; quantize its float original instead")
    quantizer = InfoQQuantizer(config, pre_quantized=False)
    quantizer.validate_environment()
    quantizer.preprocess_model(model)
    model.hf_quantizer = quantizer
    quantizer.postprocess_model(model, tokenizer=tokenizer, table=table, accelerator=accelerator, progress=progress)
    return quantizer.result


def quantization_result(model):
    """The `QuantizationResult` of an InfoQ transformers model: its policy, sensitivity table and summary
    (`infoq_hf.format_summary(result.summary)` renders it). For a model quantized here (`from_pretrained(...,
    quantization_config=InfoQConfig(...))` or `quantize_pretrained`) the run's own; for one loaded from an
    InfoQ checkpoint, the summary its save recorded (table None). None for any other model."""
    quantizer = getattr(model, "hf_quantizer", None)
    return quantizer.result if isinstance(quantizer, InfoQQuantizer) else None


def final_line(summary) -> str:
    """One line saying what a quantize-on-load did (printed after the progress bars)."""
    mib = 1 / 2**20
    float_size = summary.get("float_size_bytes")
    of = f" (float {float_size * mib:.2f} MiB)" if float_size else ""
    seconds = sum(v for v in (summary.get("times_s") or {}).values() if isinstance(v, (int, float)))
    return (
        f"InfoQ: {summary['quantized_layers']} layers packed at {summary['avg_bits']:.2f} average weight bits, "
        f"{summary['size_bytes'] * mib:.2f} MiB{of}, in {seconds:.1f}s; details: "
        "infoq_hf.format_summary(infoq_hf.quantization_result(model).summary)"
    )


def stored_summary(checkpoint_files) -> dict | None:
    """The run's summary recorded in a checkpoint's safetensors header (None when it has none)."""
    for f in checkpoint_files:
        if not str(f).endswith(".safetensors"):
            continue
        with safe_open(str(f), framework="pt") as handle:
            metadata = handle.metadata()
        return header_json_object(metadata, SUMMARY_METADATA, f, "re-save the model")
    return None


def _jsonable(value):
    return json.loads(json.dumps(value, default=lambda o: o.to_dict() if hasattr(o, "to_dict") else str(o)))


def register() -> None:
    """Make quant_method "infoq" known to transformers; idempotent (safe across imports and reloads)."""
    configs, quantizers = _auto.AUTO_QUANTIZATION_CONFIG_MAPPING, _auto.AUTO_QUANTIZER_MAPPING
    if QUANT_METHOD in configs:
        configs[QUANT_METHOD] = InfoQConfig  # a reload replaces the class; registering twice would raise
    else:
        _auto.register_quantization_config(QUANT_METHOD)(InfoQConfig)
    if QUANT_METHOD in quantizers:
        quantizers[QUANT_METHOD] = InfoQQuantizer
    else:
        _auto.register_quantizer(QUANT_METHOD)(InfoQQuantizer)
    # A passed InfoQConfig meets a checkpoint's own through its loading attributes (see InfoQConfig).
    kinds = tuple(t for t in _auto.LOADING_ATTRIBUTES_CONFIG_TYPES if t.__name__ != "InfoQConfig")
    _auto.LOADING_ATTRIBUTES_CONFIG_TYPES = kinds + (InfoQConfig,)
