"""Other quantization configs' setting names, read as `InfoQConfig`'s where they mean the same.

GPTQConfig (transformers, AutoGPTQ, GPTQModel) users write `sym`, `desc_act` and `damp_percent`;
`InfoQConfig` takes them as `symmetric`, `gptq_options["act_order"]` and `gptq_options["damp"]`
(`bits`, `dataset`, `tokenizer` and `group_size` are its own settings). A name from those configs
without a setting of the same meaning is refused with the InfoQ spelling of what comes closest, and
any other unknown name with the accepted names nearest to it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

# GPTQConfig name -> the InfoQConfig setting of the same meaning (a pair: a key of that dict setting)
SAME_MEANING = {
    "sym": "symmetric",
    "desc_act": ("gptq_options", "act_order"),
    "damp_percent": ("gptq_options", "damp"),  # both a fraction of the mean Hessian diagonal
}

_OWN_LAYOUT = (
    "none: InfoQ packs its own layout and runs its own kernels; for other runtimes export the packed "
    "model (infoq_hf.export_compressed_tensors, `infoq export`)"
)

# names of GPTQConfig / AwqConfig / BitsAndBytesConfig / TorchAoConfig / QuantoConfig -> the closest InfoQ spelling
CLOSEST = {
    "model_seqlen": "seq_len=... (tokens per calibration text sample)",
    "max_input_length": "seq_len=... (tokens per calibration text sample)",
    "nsamples": "num_samples=... (calibration samples)",
    "n_samples": "num_samples=... (calibration samples)",
    "num_calibration_samples": "num_samples=... (calibration samples)",
    "batch_size": "calibration=CalibrationSpec(..., batch_size=...)",
    "true_sequential": "none needed: rounding='gptq' rounds the blocks in order, each on the outputs of the "
    "blocks already rounded",
    "static_groups": "none: with gptq_options={'act_order': True} the groups stay contiguous",
    "damp_auto_increment": "gptq_options={'damp': ...}",
    "modules_in_block_to_quantize": "modules_to_not_convert=[...] (the layers kept in float)",
    "block_name_to_quantize": "modules_to_not_convert=[...] (the layers kept in float)",
    "zero_point": "symmetric=False (zero points, the default) or symmetric=True",
    "q_group_size": "group_size=...",
    "w_bit": "bits=... (an int: every layer at that width; a list: the candidates of a search)",
    "weights": "bits=... (an int: every layer at that width; a list: the candidates of a search)",
    "quant_type": "bits=... (an int: every layer at that width; a list: the candidates of a search)",
    "load_in_4bit": "bits=4",
    "load_in_8bit": "bits=8",
    "llm_int8_skip_modules": "modules_to_not_convert=[...]",
    **{
        name: _OWN_LAYOUT
        for name in (
            "use_exllama",
            "exllama_config",
            "disable_exllama",
            "use_cuda_fp16",
            "use_marlin",
            "backend",
            "checkpoint_format",
            "meta",
            "version",
            "cache_block_outputs",
            "do_fuse",
            "fuse_max_seq_len",
            "modules_to_fuse",
        )
    },
}


def infoq_settings(given: Mapping, accepted: Iterable[str]) -> dict:
    """`given` (names `InfoQConfig` does not take itself) as InfoQ settings: {"symmetric": ...} and
    {"gptq_options": {...}} for the names of `SAME_MEANING`. Raises ValueError naming each other one
    with its InfoQ spelling (`CLOSEST`), or the `accepted` names nearest to it."""
    refused = [name for name in given if name not in SAME_MEANING]
    if refused:
        lines = []
        for name in sorted(refused):
            if name in CLOSEST:
                lines.append(f"{name!r}: in InfoQConfig {CLOSEST[name]}")
            else:
                near = difflib.get_close_matches(name, list(accepted), n=3)
                lines.append(f"{name!r}: not a setting" + (f"; did you mean {' or '.join(near)}?" if near else ""))
        raise ValueError(
            "InfoQConfig got unknown settings: " + "; ".join(lines) + " (see help(InfoQConfig) for the accepted ones)"
        )
    settings: dict = {}
    for name, value in given.items():
        target = SAME_MEANING[name]
        if isinstance(target, tuple):
            settings.setdefault(target[0], {})[target[1]] = value
        else:
            settings[target] = value
    return settings
