"""Search + allocate + quantize + save (+ push) a timm or torchvision image classifier with InfoQ.

    accelerate launch --config_file recipes/image_classifier/accelerate_gpu.yaml \
        recipes/image_classifier/quantize_classifier.py --model resnet18 --checkpoint resnet18.safetensors \
        --data path/to/imagefolder --avg-bits 3 --out out/resnet18-infoq-3bit

`--model`: a timm architecture name (`resnet18`), `torchvision:<name>` (`torchvision:resnet18`), or the
compact ResNet of the QAT recipe (`recipes:resnet8`); `--checkpoint`: weights to load (a state dict in
.pt/.pth/.bin/.safetensors, or a QAT-recipe checkpoint; `--pretrained` asks timm for its own weights
instead). `--data`: an image folder (`datasets`' imagefolder: one sub-folder per class) or
`fashion-mnist` (the Debian package, through `benchmarks.assets`).

Every process runs its share of the search (observer terms or probes); the main process allocates, packs
(`quantize_model`), measures top-1 on `--eval-samples` held-out images and saves with
`infoq_hf.save_quantized` (timm models reload with `infoq_hf.load_quantized(out)` alone).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root, for `recipes.*`

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from infoq_hf.defaults import DEFAULT_REFINE_PASSES  # noqa: E402
from recipes.common import (  # noqa: E402
    barrier,
    fashion_mnist,
    log,
    make_accelerator,
    push_folder,
    save_table_and_allocate,
    top1,
    tuple_batches,
    write_json,
)

RECIPE = "recipes/image_classifier"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model", required=True, help="timm name, torchvision:<name>, or recipes:resnet8 / recipes:resnet20"
    )
    p.add_argument("--checkpoint", default=None, help="weights to load (state dict file)")
    p.add_argument("--pretrained", action="store_true", help="timm: download the architecture's pretrained weights")
    p.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default: the data's classes)")
    p.add_argument("--in-chans", type=int, default=None, help="input channels (default 1 for fashion-mnist, else 3)")
    p.add_argument("--img-size", type=int, default=None, help="fashion-mnist: resize the 28 px images to this size")
    p.add_argument("--data", required=True, help="an image folder, or 'fashion-mnist'")
    p.add_argument("--calib-split", default="train")
    p.add_argument("--eval-split", default="test", help="imagefolder split for --eval-samples ('' to skip)")
    p.add_argument("--num-samples", type=int, default=256, help="calibration images")
    p.add_argument("--eval-samples", type=int, default=1000, help="held-out images for top-1 (0 to skip)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--avg-bits", type=float, default=3.0, help="budget: parameter-weighted mean weight bits")
    p.add_argument("--bits", default="2,3,4,8", help="candidate bit-widths, comma separated")
    p.add_argument("--method", default="infoq", help="infoq, hawq, weight_mse, random or oracle")
    p.add_argument("--symmetric", action="store_true")
    p.add_argument("--solver", default="auto")
    p.add_argument(
        "--refine-passes",
        type=int,
        default=DEFAULT_REFINE_PASSES,
        help="whole-model passes refining the allocation (split over processes; 0 = ILP only)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out", required=True, help="folder for the packed checkpoint (+ infoq_sensitivity.json, policy.json)"
    )
    p.add_argument("--push-to-hub", default=None, metavar="REPO_ID")
    p.add_argument("--hub-token", default=None)
    p.add_argument("--private", action="store_true")
    p.add_argument("--cpu", action="store_true", help="run every process on the CPU (gloo), even with GPUs present")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def load_state_dict(path: str) -> dict:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise SystemExit(f"--checkpoint {path}: expected a state dict, got {type(state).__name__}")
    return state


def build_model(args, num_classes: int, in_chans: int) -> nn.Module:
    name = args.model
    if name.startswith("recipes:"):
        from recipes.qat.resnet import CifarResNet, load_checkpoint

        if args.checkpoint:
            return load_checkpoint(args.checkpoint)[0]
        depth = {"resnet8": 1, "resnet14": 2, "resnet20": 3}.get(name.split(":", 1)[1])
        if depth is None:
            raise SystemExit(
                f"--model {name}: the recipes models are recipes:resnet8, recipes:resnet14, recipes:resnet20"
            )
        return CifarResNet(depth, in_chans=in_chans, num_classes=num_classes)
    if name.startswith("torchvision:"):
        import torchvision

        if in_chans != 3:
            raise SystemExit(f"torchvision models take 3 input channels; got --in-chans {in_chans} (use a timm model)")
        model = torchvision.models.get_model(name.split(":", 1)[1], weights=None, num_classes=num_classes)
    else:
        import timm

        model = timm.create_model(name, pretrained=args.pretrained, num_classes=num_classes, in_chans=in_chans)
    if args.checkpoint:
        missing, unexpected = model.load_state_dict(load_state_dict(args.checkpoint), strict=False)
        if missing or unexpected:
            raise SystemExit(
                f"--checkpoint {args.checkpoint} does not fit {name}: missing {missing[:5]}, "
                f"unexpected {unexpected[:5]}"
            )
    return model


def fashion_data(args, in_chans: int):
    calib_n = args.num_samples
    xtr, ytr, xte, yte = fashion_mnist(None, args.eval_samples or 1, args.seed)
    idx = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(args.seed + 1))[:calib_n]
    xtr, ytr = xtr[idx], ytr[idx]

    def shape(x):
        if args.img_size and args.img_size != 28:
            x = nn.functional.interpolate(x, size=(args.img_size, args.img_size), mode="bilinear", align_corners=False)
        return x.expand(-1, in_chans, -1, -1).contiguous() if in_chans != 1 else x

    return tuple_batches(shape(xtr), ytr, args.batch_size), (shape(xte), yte) if args.eval_samples else None, 10


def folder_data(args, model: nn.Module):
    import datasets

    from infoq_hf.calibration import image_transform_for, load_calibration

    if getattr(model, "pretrained_cfg", None):
        transform = image_transform_for(model)
    else:  # torchvision / plain modules: the ImageNet evaluation transform
        import torchvision.transforms as T

        transform = T.Compose(
            [T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
        )
    spec = dict(
        dataset="imagefolder",
        data_dir=args.data,
        label_column="label",
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        seed=args.seed,
        image_column="image",
    )
    calib = load_calibration(dict(spec, split=args.calib_split), image_transform=transform, format="tuple")
    held_out = None
    if args.eval_samples and args.eval_split:
        batches = load_calibration(
            dict(spec, split=args.eval_split, num_samples=args.eval_samples), image_transform=transform, format="tuple"
        )
        held_out = (torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))
    classes = (
        datasets.load_dataset("imagefolder", data_dir=args.data, split=args.calib_split).features["label"].num_classes
    )
    return calib, held_out, classes


def main(argv=None) -> dict:
    args = parse_args(argv)
    from infoq_hf import quantize_model
    from infoq_hf.integrations import save_quantized
    from infoq_hf.sensitivity import search

    accelerator = make_accelerator(args.cpu, RECIPE)
    started = time.perf_counter()
    is_fashion = args.data.lower().replace("_", "-") == "fashion-mnist"
    in_chans = args.in_chans or (1 if is_fashion else 3)
    if is_fashion:
        calib, held_out, classes = fashion_data(args, in_chans)
        model = build_model(args, args.num_classes or classes, in_chans)
    else:
        if not Path(args.data).is_dir():
            raise SystemExit(f"--data {args.data}: not a folder (an imagefolder) and not 'fashion-mnist'")
        probe_model = build_model(args, args.num_classes or 1000, in_chans)  # for its transform only
        calib, held_out, classes = folder_data(args, probe_model)
        model = build_model(args, args.num_classes or classes, in_chans) if args.num_classes is None else probe_model
    model = model.to(accelerator.device).eval()
    calib = [(x.to(accelerator.device), y.to(accelerator.device)) for x, y in calib]
    log(
        accelerator,
        f"{args.model}: {sum(p.numel() for p in model.parameters())} parameters, {len(calib)} calibration "
        f"batches, {accelerator.num_processes} process(es) on {accelerator.device}",
    )

    table = search(
        model,
        calib,
        bits=[int(b) for b in args.bits.split(",")],
        method=args.method,
        seed=args.seed,
        symmetric=args.symmetric,
        accelerator=accelerator,
        progress=not args.no_progress,
    )
    search_s = time.perf_counter() - started
    out, policy = save_table_and_allocate(
        accelerator,
        table,
        args.out,
        args.avg_bits,
        args.solver,
        model=model,
        calibration=calib,
        refine_passes=args.refine_passes,
        progress=not args.no_progress,
    )
    result = {}
    if accelerator.is_main_process:
        result = {"search_s": search_s, "processes": accelerator.num_processes, "allocation": policy.report.to_dict()}
        if held_out is not None:
            result["fp32_top1"] = top1(model, *held_out, device=accelerator.device)
        quantize_model(model, policy, symmetric=args.symmetric)
        if held_out is not None:
            result["quantized_top1"] = top1(model, *held_out, device=accelerator.device)
            result["eval_samples"] = len(held_out[1])
            log(
                accelerator,
                f"top-1 on {len(held_out[1])} held-out images: fp32 {result['fp32_top1']:.2f}%, "
                f"InfoQ {args.avg_bits:g} bits {result['quantized_top1']:.2f}%",
            )
        save_quantized(model.cpu(), out / "checkpoint", policy)
        write_json(out / "recipe_result.json", result)
        log(accelerator, f"saved {out}/checkpoint (search {search_s:.1f} s)")
        if args.push_to_hub:
            result["pushed"] = push_folder(out / "checkpoint", args.push_to_hub, args.hub_token, args.private)
            log(accelerator, f"pushed to {result['pushed']}")
    barrier(accelerator)
    return result


if __name__ == "__main__":
    main()
