"""Which form of InfoQ's first-order scores allocates best (dev data; SmolLM2-135M and a ResNet-8).

    python -m benchmarks.studies.score_forms --model smollm2          # ~30 min on 2 CPU cores
    python -m benchmarks.studies.score_forms --model fashion_resnet   # ~5 min; results/score_forms_MODEL.md

The calibrated cost alpha_l x t2(l, b) measures one information change per layer, at the probe width
with round to nearest's perturbation, and scales it across widths by the quantizer's weight error
(and GPTQ's error ratio). The first order can instead measure every width at once (`scores="per_width"`),
perturbing each layer by the weights the model is packed with (GPTQ's candidates when packing rounds
with GPTQ), either as the signed |<dSMI_j/dW_l, Delta_b>| or as sum |dSMI_j/dW_l * Delta_b| over
elements and batches (`magnitude=True`), which no cancellation can hide. Rows:

- each InfoQ form and observer setting, through `quantize_with_infoq` (the pipeline searches itself);
- the next-token loss in the magnitude form, sum |dLoss/dW_l * Delta_b| (not InfoQ: the score AutoRound's
  AutoScheme allocates by, with its own rounding), packed by the same pipeline, to tell the score's
  objective from its form;
- SmolLM2: AutoScheme's allocation (its policy files, `benchmarks/peers/`) packed the same way.

SmolLM2: the compare's setup (32x128 calibration tokens, search on the first 4 windows, group 64,
candidates {2,3,4,8}, GPTQ candidates on the budget's uniform start), three GPTQ paths (the weights as
loaded and two float32-sized jitters, `common.jitter_weights`), dev perplexity on 16x128 tokens.
ResNet-8 (`--checkpoint`, from `python recipes/qat/train_fashion_mnist.py --epochs 3 --train-samples
20000 --out out/fashion_resnet8.pt`): the setup of `probe_width_cnn` (per channel,
round to nearest, 512 calibration images), search seeds 0, 1, 2, dev top-1 on 10000 training images the
checkpoint was not trained on. Dev data only: this study chooses the default; test data is never read.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch

from infoq_hf import BitPolicy, InfoQConfig, quantizable_layers
from infoq_hf.pipeline import quantize_with_infoq, stages
from infoq_hf.pipeline.data import first_samples
from infoq_hf.quant.modules import fake_quantize_layer
from infoq_hf.quant.scheme import PackingScheme
from infoq_hf.sensitivity import SensitivityTable

from .. import assets, common
from ..peers.policy_file import load_policy_file

BITS = (2, 3, 4, 8)
SEARCH_SAMPLES = 4  # as the main job
LOSS = "loss magnitude (not InfoQ)"
PER_WIDTH = {"scores": "per_width", "change_estimate": "first_order"}
BLOCKS = {"task_observers": "last", "input_weight": 1.0}  # the last quarter of the blocks + output; input term
FORMS = {  # InfoQ's method_options for each row, every setting named (defaults change)
    "calibrated alpha x t2, signed": {"scores": "calibrated", "magnitude": False, **BLOCKS},
    "per width, signed": {**PER_WIDTH, "magnitude": False, **BLOCKS},
    "per width, magnitude": {**PER_WIDTH, "magnitude": True, **BLOCKS},
    "per width, magnitude, task term only": {**PER_WIDTH, "magnitude": True, **BLOCKS, "input_weight": 0.0},
    "per width, magnitude, output only": {
        **PER_WIDTH,
        "magnitude": True,
        "input_weight": 0.0,
        "task_observers": ["<output>"],
    },
}


def with_scores(table: SensitivityTable, scores: dict) -> SensitivityTable:
    """`table`'s layers with weight costs `scores` at each width (8 bits: 0), used as measured."""
    layers = {}
    for name, info in table.layers.items():
        entry = {k: v for k, v in info.items() if k not in ("alpha", "t2", "w")}
        entry["w"] = {**{b: float(scores[name][b]) for b in table.bits if b != 8}, 8: 0.0}
        layers[name] = entry
    return SensitivityTable(table.method, table.bits, layers, copy.deepcopy(table.meta))


def loss_table(model, searched, sizes, quantized, skip) -> SensitivityTable:
    """sum over batches and elements of |dLoss/dW_l * (quantized(l, b) - W_l)|, at the float weights."""
    layers = quantizable_layers(model, skip_modules=skip)
    scores = {n: dict.fromkeys(BITS[:-1], 0.0) for n in layers}
    flags = {p: p.requires_grad for p in model.parameters()}
    try:
        for p in flags:
            p.requires_grad_(False)
        for layer in layers.values():
            layer.weight.requires_grad_(True)
        for batch in searched:
            model.zero_grad(set_to_none=True)
            with torch.enable_grad():
                if isinstance(batch, dict):
                    loss = model(**batch, labels=batch["input_ids"]).loss
                else:
                    loss = torch.nn.functional.cross_entropy(model(batch[0]), batch[1])
                loss.backward()
            for n, layer in layers.items():
                grad = layer.weight.grad.float().abs()
                for b in scores[n]:
                    delta = (quantized(n, b).float() - layer.weight.detach().float()).abs()
                    scores[n][b] += float((grad * delta).sum())
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.zero_grad(set_to_none=True)
    return with_scores(sizes, scores)


def smollm2_path(jitter, budgets, calib, dev, peers, seed) -> dict:
    """{(row, budget): (dev perplexity, check note)} on one GPTQ path."""
    skip = ["lm_head"]
    model, _ = assets.load_smollm2()
    if jitter:
        common.jitter_weights(model, jitter, skip)
    searched = first_samples(calib, SEARCH_SAMPLES)
    scheme = PackingScheme(group_size=64)
    sizes = stages.layer_table(model, BITS, scheme=scheme, skip_modules=skip, embeddings=False)
    names = list(sizes.layers)
    starts = common.CandidatesByStart(model, {n: BITS for n in names}, calib, common.gptq_scheme(64))
    base = dict(bits=BITS, group_size=64, calibration=calib, seed=seed, search_samples=SEARCH_SAMPLES)
    out = {}

    def record(row, budget, model_, note):
        out[row, budget] = (common.perplexity(model_, dev), note)
        print(f"  {budget} {row}: {out[row, budget][0]:.2f} ({note})", flush=True)

    for budget in budgets:
        candidates = starts.for_budget(sizes, budget)
        for row, options in FORMS.items():
            m = copy.deepcopy(model)
            config = InfoQConfig(**base, budget={"avg_bits": budget}, method_options=options)
            result = quantize_with_infoq(m, config, candidates=candidates, skip_modules=skip, progress=False)
            record(row, budget, m, common.check_note(result))
        table = loss_table(model, searched, sizes, candidates.weight, skip)
        m = copy.deepcopy(model)
        config = InfoQConfig(**base, budget={"avg_bits": budget})
        result = quantize_with_infoq(m, config, table=table, candidates=candidates, skip_modules=skip, progress=False)
        record(LOSS, budget, m, common.check_note(result))
        for peer in [p for p in peers if abs(p.budget - budget) < 1e-9]:
            policy = BitPolicy({n: {"w_bits": peer.layers[n], "a_bits": None} for n in names})
            m = copy.deepcopy(model)
            config = InfoQConfig(**base, policy=policy)
            quantize_with_infoq(m, config, candidates=candidates, skip_modules=skip, progress=False)
            record("AutoScheme's allocation", budget, m, "as given")
    return out


def resnet_seed(model, calib, dev, seed, budgets) -> dict:
    """{(row, budget): (dev top-1, check note)} for one search seed."""
    base = dict(bits=BITS, group_size=None, calibration=calib, pin_first_last=False, seed=seed)
    scheme = PackingScheme(group_size=None)
    sizes = stages.layer_table(model, BITS, scheme=scheme, skip_modules=(), embeddings=False)
    layers = quantizable_layers(model)

    def rounded(n, b):
        return fake_quantize_layer(layers[n], layers[n].weight.detach(), scheme.weight_scheme(layers[n], b), n)

    tables = {LOSS: loss_table(model, calib, sizes, rounded, ())}
    out = {}
    for budget in budgets:
        for row in [*FORMS, LOSS]:
            m = copy.deepcopy(model)
            options = {} if row == LOSS else FORMS[row]
            config = InfoQConfig(**base, budget={"avg_bits": budget}, method_options=options)
            result = quantize_with_infoq(m, config, table=tables.get(row), progress=False)
            out[row, budget] = (common.top1(m, dev), common.check_note(result))
            print(f"  {budget} {row}: {out[row, budget][0]:.2f} ({out[row, budget][1]})", flush=True)
    return out


def table_rows(runs: list[dict], budgets, metric: str) -> list[str]:
    lines = [f"| scores | budget | {metric} per run | mean | whole-model check per run |", "|---|---|---|---|---|"]
    rows = list(dict.fromkeys(row for row, _ in runs[0]))
    for budget in budgets:
        for row in rows:
            if (row, budget) not in runs[0]:
                continue
            values = [r[row, budget][0] for r in runs]
            notes = " / ".join(r[row, budget][1] for r in runs)
            shown = " / ".join(f"{v:.2f}" for v in values)
            lines.append(f"| {row} | {budget:g} | {shown} | {statistics.mean(values):.2f} | {notes} |")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", type=float, nargs="+", default=[3.0, 3.5, 4.0], help="SmolLM2's average bits")
    p.add_argument("--cnn-budgets", type=float, nargs="+", default=[2.5, 3.0])
    p.add_argument("--jitters", type=int, default=2)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="the ResNet-8's search seeds")
    p.add_argument("--model", choices=["smollm2", "fashion_resnet"], required=True)
    p.add_argument("--checkpoint", default="out/fashion_resnet8.pt", help="fashion_resnet: the fp32 checkpoint")
    p.add_argument("--out", default=None, help="default benchmarks/results/score_forms_MODEL.md")
    args = p.parse_args(argv)
    started = time.perf_counter()
    command = "python -m benchmarks.studies.score_forms " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [f"# The form of InfoQ's first-order scores ({common.machine()})", "", f"`{command}`", ""]
    lines += smollm2_section(args) if args.model == "smollm2" else resnet_section(args)
    lines += ["", f"{time.perf_counter() - started:.0f} s in all."]
    text = "\n".join(lines)
    print(text)
    out = Path(args.out or f"benchmarks/results/score_forms_{args.model}.md")
    out.write_text(text + "\n")


def smollm2_section(args) -> list[str]:
    _, _, calib, dev, _ = common.smollm2_data(32, common.DEV_WINDOWS, 0)
    peers = [
        load_policy_file(f"autoscheme={path}", "smollm2")
        for b in args.budgets
        if (path := Path(f"benchmarks/results/policies/autoscheme_smollm2_{b:g}.json")).exists()
    ]
    runs = []
    for jitter in range(args.jitters + 1):
        print(f"SmolLM2, path {jitter} ({'as loaded' if jitter == 0 else f'jitter seed {jitter}'})", flush=True)
        runs.append(smollm2_path(jitter, args.budgets, calib, dev, peers, 0))
    return [
        "## SmolLM2-135M",
        "",
        f"32x128 calibration tokens (search on the first {SEARCH_SAMPLES} windows), dev perplexity on "
        f"{common.DEV_WINDOWS}x128 tokens; group 64, candidates {{2,3,4,8}}, GPTQ candidates on the budget's "
        f"uniform start, every row through `quantize_with_infoq`; runs: the weights as loaded and {args.jitters} "
        "jitters (each a GPTQ path).",
        "",
        *table_rows(runs, args.budgets, "dev perplexity"),
    ]


def resnet_section(args) -> list[str]:
    from .probe_width_cnn import fashion_dev_split

    if not Path(args.checkpoint).exists():
        raise SystemExit(
            f"no checkpoint at {args.checkpoint}: python recipes/qat/train_fashion_mnist.py --epochs 3 "
            "--train-samples 20000 --out out/fashion_resnet8.pt"
        )
    model, calib, dev = fashion_dev_split(args.checkpoint)
    seeds = []
    for seed in args.seeds:
        print(f"ResNet-8, seed {seed}", flush=True)
        seeds.append(resnet_seed(model, calib, dev, seed, args.cnn_budgets))
    return [
        "## Fashion-MNIST ResNet-8",
        "",
        f"Per channel, round to nearest, 512 calibration images, candidates {{2,3,4,8}}, no pins; dev top-1 % "
        f"on 10000 training images the checkpoint was not trained on (float {common.top1(model, dev):.2f}); "
        "runs: search seeds " + ", ".join(map(str, args.seeds)) + ".",
        "",
        *table_rows(seeds, args.cnn_budgets, "dev top-1"),
    ]


if __name__ == "__main__":
    main()
