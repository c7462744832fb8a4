"""The code a model card shows: the snippet that loads the checkpoint, and the `infoq quantize` command
that redoes its allocation."""

from __future__ import annotations

from collections.abc import Mapping

from ..checkpoint_info import CheckpointInfo
from ..origin import is_repo_id


def usage_snippet(
    kind: str, location: str, model_config: Mapping, *, has_tokenizer: bool, base_model: str | None
) -> str:
    """A snippet that runs as pasted: it loads from `location` and names only files the folder holds
    (a causal LM without a saved tokenizer uses its base model's, else plain token ids)."""
    if kind == "transformers":
        arch = (model_config.get("architectures") or [""])[0]
        auto = "AutoModel"
        for suffix, cls in (
            ("ForCausalLM", "AutoModelForCausalLM"),
            ("ForSequenceClassification", "AutoModelForSequenceClassification"),
            ("ForImageClassification", "AutoModelForImageClassification"),
            ("ForMaskedLM", "AutoModelForMaskedLM"),
        ):
            if arch.endswith(suffix):
                auto = cls
        head = 'import infoq_hf  # registers the "infoq" quantization method with transformers\n'
        if auto == "AutoModelForCausalLM" and (has_tokenizer or base_model):
            source, note = (location, "") if has_tokenizer else (base_model, "  # the base model's (none saved here)")
            return (
                f"{head}from transformers import AutoModelForCausalLM, AutoTokenizer\n\n"
                f'tokenizer = AutoTokenizer.from_pretrained("{source}"){note}\n'
                f'model = AutoModelForCausalLM.from_pretrained("{location}")\n'
                'inputs = tokenizer("The quick brown fox", return_tensors="pt")\n'
                "output = model.generate(**inputs, max_new_tokens=32, do_sample=False)\n"
                "print(tokenizer.decode(output[0], skip_special_tokens=True))"
            )
        if auto == "AutoModelForCausalLM":
            return (
                f"{head}import torch\nfrom transformers import AutoModelForCausalLM\n\n"
                f'model = AutoModelForCausalLM.from_pretrained("{location}")\n'
                "ids = torch.tensor([[1, 2, 3, 4]])  # token ids of the base model's tokenizer (none saved here)\n"
                "print(model.generate(ids, max_new_tokens=8, do_sample=False))"
            )
        return f'{head}from transformers import {auto}\n\nmodel = {auto}.from_pretrained("{location}")'
    loader = (
        f'model = load_quantized("{location}")  # a timm model, packed'
        if kind == "timm"
        else f'model = load_quantized("{location}", model=MyModel())  # MyModel: your float architecture'
    )
    if is_repo_id(location):
        return "from infoq_hf.hub import load_from_hub\n\n" + loader.replace("load_quantized(", "load_from_hub(")
    return f"from infoq_hf import load_quantized\n\n{loader}"


def reproduce_command(info: CheckpointInfo, cal: dict | None, base_model: str | None) -> str:
    """The `infoq quantize` command that redoes this allocation (local paths as base names)."""
    cfg = info.config
    model = base_model or "FLOAT_MODEL_DIR"
    if info.kind == "timm":
        model = f"timm:{(info.model_config.get('pretrained_cfg') or {}).get('hf_hub_id') or base_model or 'NAME'}"
    parts = [f"infoq quantize {model}", f"--bits {','.join(map(str, cfg.get('bits') or []))}"]
    flags = {"avg_bits": "--avg-bits", "compression": "--compression", "bitops": "--bitops"}
    for key, value in (cfg.get("budget") or {}).items():
        if key == "size_bytes":
            parts.append(f"--size-mb {value / 1e6:g}")
        elif key in flags:
            parts.append(f"{flags[key]} {value:g}")
    parts.append(f"--method {cfg.get('method', 'infoq')}")
    if cal:
        source = cal.get("data_dir") or cal.get("data_files") or cal.get("dataset")
        if isinstance(source, list):
            source = source[0] if len(source) == 1 else "CALIB_DIR"
        if isinstance(source, str) and not cal.get("source"):
            parts.append(f"--calib {source}")
        for key, flag in (("num_samples", "--samples"), ("seq_len", "--seq-len")):
            if cal.get(key):
                parts.append(f"{flag} {cal[key]}")
    parts.append(f"--group-size {cfg.get('group_size') or 'none'}")
    if cfg.get("symmetric"):
        parts.append("--symmetric")
    parts.append(f"--seed {cfg.get('seed', 0)} --out OUT_DIR")
    return " ".join(parts)
