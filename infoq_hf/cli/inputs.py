"""What the commands read: the float model (transformers or timm), its calibration batches, and a
sensitivity table or policy JSON named on the command line; bad input is a UsageError."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..card import is_repo_id
from ..integrations.transformers import modules_kept_float
from ..pipeline import load_calibration_batches
from ..policy import BitPolicy
from ..sensitivity import DATA_FREE_METHODS, SensitivityTable
from .common import UsageError, say


class LoadedModel:
    """A float model as the CLI found it, with what is needed to reload, tokenize and save it."""

    def __init__(self, spec: str):
        self.spec = spec
        self.kind = "timm" if spec.startswith("timm:") else "transformers"
        self.tokenizer = None
        self.model_class = None
        self.base_model = None
        if self.kind == "timm":
            self.model = self._load_timm(spec[len("timm:") :])
        else:
            self.model = self._load_transformers(spec)
        self.model.eval()

    def _load_timm(self, name: str):
        import timm

        if not name:
            raise UsageError("timm:NAME needs a model name or folder after 'timm:', e.g. timm:resnet18.a1_in1k")
        if os.path.isdir(name):
            if not os.path.isfile(os.path.join(name, "config.json")):
                raise UsageError(f"{name} has no config.json; save timm models with timm.models.save_for_hf")
            # pretrained=True reads the folder's weights (without it timm builds a randomly initialised model)
            return timm.create_model(f"local-dir:{os.path.abspath(name)}", pretrained=True)
        if os.path.exists(name):
            raise UsageError(f"timm:PATH must be a folder saved with timm.models.save_for_hf, got the file {name}")
        try:
            model = timm.create_model(name, pretrained=True)
        except RuntimeError as e:
            if "Unknown model" in str(e):
                raise UsageError(f"timm has no model {name!r} (see timm.list_models())") from None
            raise
        self.base_model = getattr(model, "pretrained_cfg", {}).get("hf_hub_id")
        return model

    def _load_transformers(self, path: str):
        import transformers

        local = os.path.isdir(path)
        if local and not os.path.isfile(os.path.join(path, "config.json")):
            raise UsageError(
                f"{path} has no config.json: not a transformers model folder "
                "(for timm models write timm:NAME or timm:PATH)"
            )
        if not local and not is_repo_id(path):
            raise UsageError(f"MODEL {path!r} is neither a model folder nor a Hub id (for timm models: timm:NAME)")
        config = transformers.AutoConfig.from_pretrained(path)
        if getattr(config, "quantization_config", None):
            raise UsageError(f"{path} is already quantized; quantize its float original instead")
        arch = (getattr(config, "architectures", None) or [None])[0]
        self.model_class = getattr(transformers, arch, None) if arch else None
        self.model_class = self.model_class or transformers.AutoModel
        self.base_model = None if local else path
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError, TypeError, KeyError):
            self.tokenizer = None  # a vision model, or no tokenizer saved: images or data-free methods only
        return self.model_class.from_pretrained(path)

    def skip_modules(self, quantize_embeddings: bool = False) -> list[str]:
        """Layers transformers keeps in float by default (lm_head, a classifier; the embeddings unless
        `quantize_embeddings`); timm: none."""
        if self.kind != "transformers":
            return []

        return modules_kept_float(self.model, None, quantize_embeddings)


def load_batches(loaded: LoadedModel, spec: dict | None, method: str) -> list | None:
    """The calibration batches for `spec` (None for a data-free method without --calib)."""
    if method in DATA_FREE_METHODS and spec is None:
        return None
    if spec is None:
        raise UsageError(f"--method {method} needs calibration data: pass --calib SPEC (or use --method weight_mse)")
    say(f"loading calibration data: {spec['dataset']} ({spec['num_samples']} samples)")
    return load_calibration_batches(spec, loaded.model, tokenizer=loaded.tokenizer)


def _read_json(path: str | os.PathLike, flag: str, what: str, writer: str):
    """The JSON file named by `flag`; UsageError when it is missing or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{flag} {path}: no such {what} file (write one with {writer})")
    try:
        return path, json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"{flag} {path} is not a {what} JSON ({e})") from None


def read_table(path: str | os.PathLike, flag: str):
    """A sensitivity table JSON named on the command line; UsageError when it is not one."""

    path, data = _read_json(path, flag, "sensitivity table", "infoq search")
    if not isinstance(data, dict) or not isinstance(data.get("layers"), dict):
        raise UsageError(
            f'{flag} {path} is not a sensitivity table: expected a JSON object with "layers" '
            f"(as infoq search writes), got a JSON {type(data).__name__}"
        )
    table = SensitivityTable.from_dict(data)
    table.validate()
    return table


def read_policy(path: str | os.PathLike, flag: str):
    """A policy JSON named on the command line; UsageError when it is not one."""

    path, data = _read_json(path, flag, "policy", "infoq allocate")
    policy = BitPolicy.from_dict(data)
    if not policy:
        raise UsageError(f"{flag} {path} lists no layers")
    return policy
