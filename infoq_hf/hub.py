"""Publish packed checkpoints to the Hugging Face Hub with a model card, and load them back.

`push_to_hub(model_or_dir, repo_id, ...)` stages everything in a temporary folder (the files
`infoq_hf.save` writes, `infoq_hf.saving`):
  the checkpoint (transformers `save_pretrained`, or `save_quantized` for timm / plain models), the tokenizer,
  `infoq_sensitivity.json` (when a sensitivity table is known), `infoq_summary.json`,
  PNG plots, and `README.md`, the model card (`infoq_hf.card`) whose YAML metadata the Hub
  understands. It then validates the card, creates the repo and uploads the folder in ONE commit.
  A Hub commit is atomic: when it fails, none of its files are stored, and an empty repo this call
  created is deleted again, so a failed push leaves nothing that looks published.

`load_from_hub(repo_id, revision=None)` downloads a snapshot (any branch, tag or commit sha)
and loads it: timm checkpoints through `load_quantized`, plain modules into a `model` you pass,
transformers checkpoints through the model class named in their config (plain
`AutoModel*.from_pretrained(repo)` works too, after `import infoq_hf`).

What a checkpoint folder holds is read by `infoq_hf.checkpoint_info`, the card is written by
`infoq_hf.card`; the names of theirs that code outside the package imports from here (read_checkpoint,
SUMMARY_FILE, TABLE_FILE, render_model_card, card_context, write_model_card, ...) are imported below.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch.nn as nn

from .card import (  # noqa: F401  (TEMPLATE_PATH ... write_plots: importable from here, as before the split)
    CARD_FILE,
    PLOT_FILES,
    TEMPLATE_PATH,
    ModelCardError,
    card_context,
    check_model_card,
    render_model_card,
    write_model_card,
    write_plots,
)
from .checkpoint import INFOQ_CONFIG_NAME, read_json
from .checkpoint_info import (  # noqa: F401  (SUMMARY_FILE: importable from here, as before the split)
    SUMMARY_FILE,
    TABLE_FILE,
    CheckpointInfo,
    checkpoint_kind,
    load_checkpoint_model,
    read_checkpoint,
)
from .integrations.timm import load_quantized
from .origin import REPO_ID
from .policy import BitPolicy
from .saving import write_checkpoint_folder
from .sensitivity.table import SensitivityTable
from .upload_files import checkpoint_files, copy_without_links

_LOGIN_HINT = "set the HF_TOKEN environment variable to a write token, run `hf auth login`, or pass token=..."


# ----------------------------------------------------------------------------- errors
class HubPublishError(RuntimeError):
    """A push could not be completed; the message says what was (not) stored."""


class MissingTokenError(HubPublishError, ValueError):
    """No Hub token was given or configured."""


class TokenRefusedError(HubPublishError, ValueError):
    """The Hub answered 401/403: the token is invalid, expired, or may not write to that namespace."""


class RepoExistsError(HubPublishError, ValueError):
    """The target repo exists and `overwrite` was not set."""


# ----------------------------------------------------------------------------- staging
def prepare_upload_folder(
    model_or_dir,
    folder: str | os.PathLike,
    repo_id: str,
    *,
    table=None,
    policy=None,
    base_model=None,
    calibration=None,
    template=None,
    tokenizer=None,
    include=(),
) -> str:
    """Assemble everything `push_to_hub` uploads into the empty `folder`; returns the model card text.
    From a checkpoint folder only its own files go (see `upload_files`), and those named in `include`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(table, (str, os.PathLike)):
        table = SensitivityTable.load(table)
    info = _stage_checkpoint(model_or_dir, folder, table, policy, tokenizer, include)
    return write_model_card(folder, info, repo_id, base_model=base_model, calibration=calibration, template=template)


def _stage_checkpoint(model_or_dir, folder: Path, table, policy, tokenizer=None, include=()) -> CheckpointInfo:
    """Write the checkpoint into the empty `folder` and describe it."""
    if isinstance(model_or_dir, (str, os.PathLike)):
        if tokenizer is not None:
            raise ValueError(
                "push_to_hub of a folder uploads the tokenizer the folder holds; tokenizer= is for a model"
            )
        source = Path(model_or_dir)
        info = read_checkpoint(source, table=table)  # validates before copying
        keep, _ = checkpoint_files(source, include, regenerated={CARD_FILE, *PLOT_FILES.values()})
        for item in keep:
            copy_without_links(item, folder / item.name)
    elif isinstance(model_or_dir, nn.Module):  # the same files `infoq_hf.save` writes
        info = write_checkpoint_folder(model_or_dir, folder, tokenizer=tokenizer, table=table, policy=policy)
    else:
        raise ValueError(
            f"push_to_hub takes a quantized model or a checkpoint folder, got {type(model_or_dir).__name__}"
        )
    if info.table is not None and not (folder / TABLE_FILE).exists():
        info.table.save(folder / TABLE_FILE)
    if policy is not None:
        given = policy if isinstance(policy, BitPolicy) else BitPolicy.from_dict(policy)
        if given.to_dict() != info.policy.to_dict():
            raise ValueError(
                "the policy passed to push_to_hub differs from the one stored in the checkpoint; "
                "pass the policy the model was quantized with (or none)"
            )
        report = getattr(given, "report", None)
        if report is not None and hasattr(report, "to_dict"):
            info.summary.setdefault("allocation", report.to_dict())
    return info


# ----------------------------------------------------------------------------- pushing
def resolve_token(token: str | None = None) -> str:
    """The token to push with: `token`, else HF_TOKEN / the stored login; a clear error when there is none."""
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise MissingTokenError(f"pushing to the Hugging Face Hub needs a token with write access: {_LOGIN_HINT}")
    return token


def _network_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import HfHubHTTPError

    errors: tuple = (HfHubHTTPError, OSError, TimeoutError)
    for http_client in ("httpx", "httpx2"):  # huggingface_hub's HTTP client (its name varies by release)
        try:
            errors += (__import__(http_client).HTTPError,)
        except (ImportError, AttributeError):
            pass
    try:
        import requests

        errors += (requests.RequestException,)
    except ImportError:
        pass
    return errors


def _unreachable_or_refused(e: BaseException, endpoint: str, repo_id: str) -> HubPublishError:
    """The error for a failed Hub call before anything was created: a refused token (HTTP 401/403) is
    bad input, anything else an unreachable Hub."""
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status in (401, 403):
        return TokenRefusedError(
            f"the Hub at {endpoint} refused the token (HTTP {status}): it is invalid, expired, "
            f"or may not write to {repo_id.split('/')[0]!r}; {_LOGIN_HINT}. Nothing was created "
            "or uploaded"
        )
    return HubPublishError(f"cannot reach the Hub at {endpoint} ({_describe(e)}); nothing was created or uploaded")


def _describe(e: BaseException) -> str:
    response = getattr(e, "response", None)
    status = getattr(response, "status_code", None)
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return f"HTTP {status}: {first}" if status and str(status) not in first else first


def push_to_hub(
    model_or_dir,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    overwrite: bool = False,
    table: SensitivityTable | str | os.PathLike | None = None,
    policy: BitPolicy | Mapping | None = None,
    base_model: str | None = None,
    calibration=None,
    commit_message: str | None = None,
    revision: str | None = None,
    tokenizer=None,
    include=(),
):
    """Publish a quantized model (or a checkpoint folder) with its model card and plots in one commit.

    This, not transformers' `model.push_to_hub`, writes the InfoQ card (transformers' would upload its
    generic card); the staged folder holds the same files `infoq_hf.save` writes.

    model_or_dir: a packed transformers / timm / plain model, or a folder written by `save_pretrained`,
        `save_quantized` or `infoq quantize`.
    table: the sensitivity table (object or JSON path) for the card's sensitivities, heatmap and Pareto
        curve (a folder's `infoq_sensitivity.json` is used by default).
    policy: the allocated policy (its `.report` enriches the card); must equal the checkpoint's.
    base_model: the Hub id of the float model (default: what the checkpoint recorded, if a Hub id).
    calibration: the calibration data description (CalibrationSpec, dict or dataset name).
    revision: the branch to commit to (created if missing).
    tokenizer: uploaded with a model (a folder uploads the tokenizer files it holds).
    include: names of other files or folders in `model_or_dir` to upload; by default only the checkpoint's
        own files go, the rest is listed in a warning (symbolic links never).

    Returns the `CommitInfo` of the upload (`.oid`, `.commit_url`). Raises `MissingTokenError`,
    `RepoExistsError` (pass overwrite=True), `ModelCardError`, `HubPublishError` (unreachable Hub,
    refused commit: the single commit is atomic, nothing of it is stored)."""
    from huggingface_hub import HfApi, constants

    if not isinstance(repo_id, str) or not REPO_ID.match(repo_id):
        raise ValueError(f"repo_id must look like 'user-or-org/name', got {repo_id!r}")
    token = resolve_token(token)
    api = HfApi(token=token)
    endpoint = api.endpoint or constants.ENDPOINT
    network = _network_errors()

    with tempfile.TemporaryDirectory(prefix="infoq-push-") as tmp:
        folder = Path(tmp) / "upload"
        card_text = prepare_upload_folder(
            model_or_dir,
            folder,
            repo_id,
            table=table,
            policy=policy,
            base_model=base_model,
            calibration=calibration,
            tokenizer=tokenizer,
            include=include,
        )
        from huggingface_hub import ModelCard

        try:  # the Hub's own metadata check (also proves the endpoint answers before anything is created)
            ModelCard(card_text).validate()
        except ValueError as e:
            raise ModelCardError(f"the Hub rejected the model card metadata: {e}") from None
        except network as e:
            raise _unreachable_or_refused(e, endpoint, repo_id) from e

        try:
            exists = api.repo_exists(repo_id)
        except network as e:
            raise _unreachable_or_refused(e, endpoint, repo_id) from e
        if exists and not overwrite:
            raise RepoExistsError(
                f"the Hub repo {repo_id} already exists; pass overwrite=True (CLI: --overwrite) to "
                "replace its files with this checkpoint in one new commit"
            )
        created = False
        try:
            if not exists:
                api.create_repo(repo_id, private=private, exist_ok=False)
                created = True
            if revision not in (None, "main"):
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            info = api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                revision=revision,
                commit_message=commit_message or f"Upload InfoQ mixed-precision checkpoint ({_card_bits(card_text)})",
                delete_patterns="*" if exists else None,  # overwrite: drop stale files, in the same commit
            )
        except network as e:
            if getattr(getattr(e, "response", None), "status_code", None) == 401 and not created:
                raise _unreachable_or_refused(e, endpoint, repo_id) from e  # 403 here may be a refused commit
            cleanup = ""
            if created:
                try:
                    api.delete_repo(repo_id, missing_ok=True)
                    cleanup = " The empty repo created for it was deleted again."
                except network:
                    cleanup = f" The repo {repo_id} was created but holds no model files; retry with overwrite=True."
            raise HubPublishError(
                f"pushing to {repo_id} at {endpoint} failed ({_describe(e)}). The upload is a single atomic commit, "
                f"so none of its files were stored and nothing was published.{cleanup}"
            ) from e
    return info


def _card_bits(card_text: str) -> str:
    match = re.search(r"avg_bits: ([0-9.]+)", card_text)
    return f"{float(match.group(1)):.2f} bits average" if match else "mixed precision"


# ----------------------------------------------------------------------------- loading
def load_from_hub(
    repo_id: str,
    revision: str | None = None,
    *,
    model: nn.Module | None = None,
    token: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    **create_kwargs,
) -> nn.Module:
    """Download a pushed infoq checkpoint (at `revision`: branch, tag or commit sha) and load it.

    timm checkpoints rebuild their architecture; plain PyTorch ones load into the float `model` you
    pass; transformers checkpoints load through the class named in their config. Returns the model
    in eval mode, weights packed."""
    from huggingface_hub import snapshot_download

    directory = Path(snapshot_download(repo_id, revision=revision, token=token, cache_dir=cache_dir))
    model_config = read_json(directory / "config.json") if (directory / "config.json").is_file() else {}
    if not (directory / INFOQ_CONFIG_NAME).is_file() and "quantization_config" not in model_config:
        raise ValueError(
            f"{repo_id} (revision {revision or 'main'}) is not an infoq checkpoint: it has neither "
            f"{INFOQ_CONFIG_NAME} nor a quantization_config"
        )
    kind = checkpoint_kind(model_config)
    if kind == "transformers":
        if model is not None:
            raise ValueError("a transformers checkpoint builds its own model; call load_from_hub without model=")
        return load_checkpoint_model(directory, kind, model_config).eval()
    if kind == "pytorch" and model is None:
        raise ValueError(
            f"{repo_id} holds a plain PyTorch checkpoint; pass model= (a float instance of its "
            "architecture) to load it into"
        )
    return load_quantized(directory, model=model, **create_kwargs)


__all__ = [
    "CheckpointInfo",
    "HubPublishError",
    "MissingTokenError",
    "ModelCardError",
    "RepoExistsError",
    "TokenRefusedError",
    "card_context",
    "check_model_card",
    "load_from_hub",
    "prepare_upload_folder",
    "push_to_hub",
    "read_checkpoint",
    "render_model_card",
    "resolve_token",
    "write_model_card",
    "write_plots",
]
