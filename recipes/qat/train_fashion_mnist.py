"""Train the fp32 compact ResNet on Fashion-MNIST and save the checkpoint the QAT recipe starts from.

    accelerate launch --config_file recipes/qat/accelerate_cpu.yaml recipes/qat/train_fashion_mnist.py \
        --epochs 4 --train-samples 30000 --out out/qat/resnet8_fp32.pt

SGD with Nesterov momentum, cosine learning rate, weight decay, random horizontal flips; data from
the Debian `dataset-fashion-mnist` package (through `benchmarks.assets`).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for `recipes.*`

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from recipes.common import barrier, fashion_mnist, log, make_accelerator, top1  # noqa: E402
from recipes.qat.resnet import CifarResNet, save_checkpoint  # noqa: E402

RECIPE = "recipes/qat"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--train-samples", type=int, default=None, help="seeded subset of the 60k training images")
    p.add_argument("--test-samples", type=int, default=None, help="seeded subset of the 10k test images")
    p.add_argument("--blocks", type=int, default=1, help="basic blocks per stage: 1 = ResNet-8, 3 = ResNet-20")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--out", required=True, help="checkpoint path (.pt)")
    p.add_argument("--cpu", action="store_true", help="run every process on the CPU, even with GPUs present")
    return p.parse_args(argv)


def flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    mask = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(mask.view(-1, 1, 1, 1).to(x.device), x.flip(-1), x)


def train_epochs(model, optimizer, scheduler, loader, accelerator, epochs: int, seed: int, tag: str) -> list[float]:
    """Plain supervised training with flips; returns the mean loss of each epoch."""
    g = torch.Generator().manual_seed(seed + accelerator.process_index)
    losses = []
    for epoch in range(epochs):
        model.train()
        total, count, started = 0.0, 0, time.perf_counter()
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(model(flip(x, g)), y)
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            total, count = total + loss.item() * len(y), count + len(y)
        losses.append(total / max(count, 1))
        log(
            accelerator,
            f"{tag} epoch {epoch + 1}/{epochs}: loss {losses[-1]:.4f} ({time.perf_counter() - started:.0f} s)",
        )
    return losses


def cosine(optimizer, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps))
    )


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    accelerator = make_accelerator(args.cpu, RECIPE)
    torch.manual_seed(args.seed)
    xtr, ytr, xte, yte = fashion_mnist(args.train_samples, args.test_samples, args.seed)
    model = CifarResNet(args.blocks, args.width)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(xtr, ytr),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    optimizer = torch.optim.SGD(
        model.parameters(), lr=args.lr, momentum=0.9, nesterov=True, weight_decay=args.weight_decay
    )
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    scheduler = cosine(optimizer, args.epochs * len(loader))
    started = time.perf_counter()
    losses = train_epochs(model, optimizer, scheduler, loader, accelerator, args.epochs, args.seed, "fp32")
    train_s = time.perf_counter() - started
    result = {}
    if accelerator.is_main_process:
        net = accelerator.unwrap_model(model)
        acc = top1(net, xte, yte, device=accelerator.device)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        result = {
            "top1": acc,
            "epochs": args.epochs,
            "train_samples": len(ytr),
            "test_samples": len(yte),
            "losses": losses,
            "train_s": train_s,
            "params": sum(p.numel() for p in net.parameters()),
        }
        save_checkpoint(net.cpu(), args.out, result=result)
        log(accelerator, f"fp32 top-1 {acc:.2f}% on {len(yte)} test images; saved {args.out}")
    barrier(accelerator)
    return result


if __name__ == "__main__":
    main()
