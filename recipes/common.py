"""What the recipes share: the accelerator (with a GPU-request check), Fashion-MNIST, evaluation, pushing."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.nn as nn

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `accelerate launch recipes/x/y.py` puts only recipes/x on the path
    sys.path.insert(0, str(REPO))


def _env_flag(name: str) -> bool | None:
    value = os.environ.get(name)
    return None if value is None else value.strip().lower() in ("1", "true", "yes", "on")


def requested_gpu_processes() -> int:
    """GPU processes the launch asks for: accelerate's multi-GPU launcher (torchrun: LOCAL_WORLD_SIZE set)
    without `ACCELERATE_USE_CPU` asks for one GPU per local process; anything else asks for none."""
    if _env_flag("ACCELERATE_USE_CPU"):
        return 0
    local = os.environ.get("LOCAL_WORLD_SIZE")
    return int(local) if local is not None and "ACCELERATE_MIXED_PRECISION" in os.environ else 0


def make_accelerator(cpu: bool = False, recipe: str = "recipes/<recipe>"):
    """An `accelerate.Accelerator` for the launch, failing clearly when it asks for GPUs there are none of.

    `cpu=True` (the scripts' `--cpu`) runs every launched process on the CPU (gloo), which is also how
    a multi-process launch is split on a machine without GPUs."""
    from accelerate import Accelerator

    want = 0 if cpu else requested_gpu_processes()
    if want:
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if have == 0:
            raise SystemExit(
                f"this accelerate launch asks for {want} GPU process(es) (a multi-GPU config such as "
                f"{recipe}/accelerate_gpu.yaml), but torch.cuda.is_available() is False on this machine. "
                f"Use --config_file {recipe}/accelerate_cpu.yaml, or add --cpu to the script's arguments to run "
                "the processes on the CPU."
            )
        if have < want:
            raise SystemExit(
                f"this accelerate launch asks for {want} GPU processes on this machine but it has {have} GPU(s); "
                f"pass --num_processes {have} to accelerate launch (or edit num_processes in the config)."
            )
    return Accelerator(cpu=cpu or not torch.cuda.is_available())


def barrier(accelerator) -> None:
    """Wait for every process. `accelerator.wait_for_everyone()` passes device_ids=[local rank] to the
    barrier, which fails for CPU (gloo) processes on a machine that has GPUs; those use a plain barrier."""
    if accelerator.num_processes <= 1:
        return
    if accelerator.device.type == "cpu":
        torch.distributed.barrier()
    else:
        accelerator.wait_for_everyone()


def log(accelerator, *message) -> None:
    if accelerator is None or accelerator.is_main_process:
        print(*message, flush=True)


# ----------------------------------------------------------------------------- Fashion-MNIST

FASHION_MEAN, FASHION_STD = 0.2860, 0.3530  # of the 60k training images, in [0, 1]


def fashion_mnist(subsample_train: int | None = None, subsample_test: int | None = None, seed: int = 0):
    """`(xtr, ytr, xte, yte)`: float [N, 1, 28, 28] normalised, int64 labels (Debian dataset-fashion-mnist,
    through `benchmarks.assets`). `subsample_*` keep a seeded random subset of that many images."""
    from benchmarks.assets import fashion_mnist as load

    xtr, ytr, xte, yte = load()

    def prep(x, y, n):
        if n is not None and n < len(y):
            idx = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))[:n]
            x, y = x[idx], y[idx]
        return ((x.float() / 255.0 - FASHION_MEAN) / FASHION_STD).unsqueeze(1), y

    return (*prep(xtr, ytr, subsample_train), *prep(xte, yte, subsample_test))


def tuple_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(y), batch_size)]


@torch.no_grad()
def top1(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512, device=None) -> float:
    """Top-1 accuracy in percent."""
    was_training = model.training
    model.eval()
    device = device or next(model.parameters(), torch.empty(0)).device
    correct = 0
    for i in range(0, len(y), batch_size):
        logits = model(x[i : i + batch_size].to(device))
        logits = getattr(logits, "logits", logits)
        correct += int((logits.argmax(-1).cpu() == y[i : i + batch_size]).sum())
    model.train(was_training)
    return 100.0 * correct / max(len(y), 1)


def push_folder(folder: str | os.PathLike, repo_id: str, token: str | None = None, private: bool = False) -> str:
    """Upload a saved checkpoint folder to the Hub with the ordinary `huggingface_hub` client."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, exist_ok=True, private=private)
    info = api.upload_folder(
        folder_path=str(folder), repo_id=repo_id, commit_message="InfoQ mixed-precision checkpoint"
    )
    return getattr(info, "commit_url", str(info))


def write_json(path: str | os.PathLike, data) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(data, indent=1))


def save_table_and_allocate(
    accelerator,
    table,
    out,
    avg_bits: float,
    solver: str = "auto",
    *,
    model=None,
    calibration=None,
    refine_passes: int = 0,
    progress: bool = True,
):
    """Every process, after the search: allocate `avg_bits` (refined on `model` over `calibration` with
    the candidates split over the processes when `refine_passes` > 0); the main process writes the table
    (under the name `infoq report` and the model card read) and policy.json."""
    from infoq_hf import Budget, allocate, refine
    from infoq_hf.hub import TABLE_FILE

    out = Path(out)
    policy = allocate(table, Budget(avg_bits=avg_bits), solver=solver)
    if refine_passes:
        policy = refine(policy, model, calibration, passes=refine_passes, accelerator=accelerator, progress=progress)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        table.save(out / TABLE_FILE)
        policy.to_json(out / "policy.json")
    log(accelerator, f"allocation: {policy.report.summary()}")
    return out, policy
