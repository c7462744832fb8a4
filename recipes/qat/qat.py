"""The InfoQ protocol end to end: search -> allocate at 3.0 average bits -> PTQ -> LSQ fine-tuning, vs uniform bits.

    accelerate launch --config_file recipes/qat/accelerate_cpu.yaml recipes/qat/qat.py \
        --checkpoint out/qat/resnet8_fp32.pt --avg-bits 3.0 --qat-epochs 2 --out out/qat/results.json

1. fp32 top-1 of the checkpoint written by `train_fashion_mnist.py`.
2. InfoQ search on `--calib-samples` images of the training split (probes split over the processes).
3. `allocate(table, Budget(avg_bits=...))`: first and last layers pinned at 8 bits (the allocator's
   default for CNNs), the rest chosen by the ILP.
4. The baseline: every layer at `--uniform-bits`, first and last pinned at 8 bits as well.
5. For each policy: post-training quantization (packed, symmetric per-channel min/max) and its top-1;
   then LSQ quantization-aware fine-tuning (`infoq_hf.quant.lsq`) for `--qat-epochs`, exported to the
   packed format, and its top-1. Weights only: activations stay float.
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for `recipes.*`

import torch  # noqa: E402

from recipes.common import barrier, fashion_mnist, log, make_accelerator, top1, tuple_batches, write_json  # noqa: E402
from recipes.qat.resnet import load_checkpoint  # noqa: E402
from recipes.qat.train_fashion_mnist import cosine, train_epochs  # noqa: E402

RECIPE = "recipes/qat"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True, help="fp32 checkpoint from train_fashion_mnist.py")
    p.add_argument("--avg-bits", type=float, default=3.0)
    p.add_argument("--uniform-bits", type=int, default=3, help="the uniform baseline's bits (0: skip it)")
    p.add_argument("--bits", default="2,3,4,5,6,8", help="candidate bit-widths of the search")
    p.add_argument("--method", default="infoq", help="sensitivity method (infoq or a baseline)")
    p.add_argument("--calib-samples", type=int, default=512, help="training images for the search")
    p.add_argument("--calib-batch-size", type=int, default=128)
    p.add_argument("--train-samples", type=int, default=None, help="seeded subset of training images for QAT")
    p.add_argument("--test-samples", type=int, default=None, help="seeded subset of the 10k test images")
    p.add_argument("--qat-epochs", type=int, default=2)
    p.add_argument("--qat-lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--step-init", default="best", choices=["best", "minmax", "lsq"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads per process")
    p.add_argument("--out", required=True, help="results JSON (tables and policies are written beside it)")
    p.add_argument("--cpu", action="store_true", help="run every process on the CPU, even with GPUs present")
    return p.parse_args(argv)


def uniform_policy(table, bits: int) -> dict:
    names = list(table.layers)
    return {n: {"w_bits": 8 if n in (names[0], names[-1]) else bits, "a_bits": None} for n in names}


def avg_bits(table, policy) -> float:
    n = sum(table.layers[k]["params"] for k in policy)
    return sum(table.layers[k]["params"] * v["w_bits"] for k, v in policy.items()) / n


def ptq_and_qat(name, fp32, policy, data, args, accelerator) -> dict:
    """PTQ top-1, then LSQ fine-tuning -> packed -> top-1, for one policy."""
    from infoq_hf import quantize_model
    from infoq_hf.quant.lsq import export_packed, prepare_qat

    xtr, ytr, xte, yte = data
    device = accelerator.device
    ptq = quantize_model(copy.deepcopy(fp32), policy, symmetric=True)
    ptq_top1 = top1(ptq, xte, yte, device=device) if accelerator.is_main_process else None
    log(accelerator, f"{name}: PTQ top-1 {ptq_top1}")

    model = prepare_qat(copy.deepcopy(fp32), policy, step_init=args.step_init)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(xtr, ytr),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(args.seed),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=args.qat_lr, momentum=0.9, nesterov=True)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    scheduler = cosine(optimizer, max(args.qat_epochs * len(loader), 1))
    started = time.perf_counter()
    losses = train_epochs(model, optimizer, scheduler, loader, accelerator, args.qat_epochs, args.seed, f"{name} QAT")
    qat_s = time.perf_counter() - started
    packed = export_packed(accelerator.unwrap_model(model))
    qat_top1 = top1(packed, xte, yte, device=device) if accelerator.is_main_process else None
    log(accelerator, f"{name}: QAT ({args.qat_epochs} epochs, {qat_s:.0f} s) -> packed top-1 {qat_top1}")
    return {"ptq_top1": ptq_top1, "qat_top1": qat_top1, "qat_losses": losses, "qat_s": qat_s}


def main(argv=None) -> dict:
    args = parse_args(argv)
    from infoq_hf import Budget
    from infoq_hf.allocation import allocate
    from infoq_hf.sensitivity import search

    if args.threads:
        torch.set_num_threads(args.threads)
    accelerator = make_accelerator(args.cpu, RECIPE)
    started = time.perf_counter()
    fp32, ckpt = load_checkpoint(args.checkpoint)
    fp32 = fp32.to(accelerator.device)
    xtr, ytr, xte, yte = fashion_mnist(args.train_samples, args.test_samples, args.seed)
    # Calibration: a seeded subset of the training split, disjoint from nothing we evaluate on.
    idx = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(args.seed + 1))[: args.calib_samples]
    calib = [
        (x.to(accelerator.device), y.to(accelerator.device))
        for x, y in tuple_batches(xtr[idx], ytr[idx], args.calib_batch_size)
    ]
    result = {
        "checkpoint": str(args.checkpoint),
        "model": ckpt["config"],
        "fp32_train": ckpt.get("result"),
        "args": vars(args),
        "processes": accelerator.num_processes,
        "device": str(accelerator.device),
    }
    result["fp32_top1"] = top1(fp32, xte, yte, device=accelerator.device) if accelerator.is_main_process else None
    log(accelerator, f"fp32 top-1 {result['fp32_top1']} on {len(yte)} test images")

    t = time.perf_counter()
    table = search(
        fp32,
        calib,
        bits=[int(b) for b in args.bits.split(",")],
        method=args.method,
        seed=args.seed,
        symmetric=True,
        accelerator=accelerator,
        progress=False,
    )
    result["search_s"] = time.perf_counter() - t
    policy = allocate(table, Budget(avg_bits=args.avg_bits))  # every process: the same table, the same ILP
    policies = {f"{args.method}@{args.avg_bits:g}": policy.to_dict()}
    if args.uniform_bits:
        policies[f"uniform-{args.uniform_bits}"] = uniform_policy(table, args.uniform_bits)
    out = Path(args.out)
    if accelerator.is_main_process:
        out.parent.mkdir(parents=True, exist_ok=True)
        table.save(out.with_name(out.stem + "_table.json"))
        write_json(out.with_name(out.stem + "_policies.json"), policies)
    log(accelerator, f"search {result['search_s']:.1f} s over {len(table.layers)} layers; {policy.report.summary()}")

    result["runs"] = {}
    for name, pol in policies.items():
        run = ptq_and_qat(name, fp32, pol, (xtr, ytr, xte, yte), args, accelerator)
        run.update(avg_bits=avg_bits(table, pol), policy={k: v["w_bits"] for k, v in pol.items()})
        result["runs"][name] = run
    result.update(
        total_s=time.perf_counter() - started,
        train_samples=len(ytr),
        test_samples=len(yte),
        calib_samples=len(idx),
        machine={
            "host": platform.node(),
            "cpus": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        },
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    if accelerator.is_main_process:
        write_json(out, result)
        log(accelerator, summary_table(result))
    barrier(accelerator)
    return result


def summary_table(result: dict) -> str:
    rows = [
        "| configuration | avg weight bits | PTQ top-1 (%) | QAT top-1 (%) |",
        "|---|---|---|---|",
        f"| fp32 | 32 | {result['fp32_top1']:.2f} | - |",
    ]
    for name, run in result["runs"].items():
        rows.append(f"| {name} | {run['avg_bits']:.3f} | {run['ptq_top1']:.2f} | {run['qat_top1']:.2f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
