"""AutoRound's AutoScheme (Intel `auto-round`) as a peer allocator: its per-layer widths at an average-bits
budget, on our model, calibration windows, candidate widths and group size.

    bash benchmarks/peers/autoscheme_venv.sh        # once: auto-round in /tmp/infoq-autoscheme-venv
    flock /tmp/infoq-heavy.lock /tmp/infoq-autoscheme-venv/bin/python -m benchmarks.peers.autoscheme_policy \\
        --avg-bits 3.0 3.5                          # writes benchmarks/results/policies/autoscheme_smollm2_<bits>.json
    /tmp/infoq-autoscheme-venv/bin/python -m benchmarks.peers.autoscheme_policy --model tiny_llama --avg-bits 3.0

Run from the repository root with the PEER venv's python: it never imports infoq_hf, only
benchmarks.common / benchmarks.assets (torch + transformers), so the calibration, dev and test windows
are `common.smollm2_data`'s, the very tensors benchmarks/compare.py uses.

AutoScheme's options are weight-only integer schemes at widths {2,3,4,8}, asymmetric, group 64 (our
compare's `PackingScheme`); `ignore_scale_zp_bits=True`, so its budget counts weight bits only, as
ours does. Its scores (gradient x quantization error, summed over the calibration tokens) are taken
on our calibration windows: AutoScheme reads calibration text by dataset name, so the run hands its
data loader our token windows instead (a named stand-in; nothing is downloaded). Its score cache goes
to a fresh temporary folder, so every run scores from scratch and the wall time is real.

With --own-eval the same `AutoRound` call goes on to quantize end to end with its own rounding
(iters=0: AutoRound's RTN mode, no sign-gradient tuning) and the fake-quantized model's perplexity on
the dev and test windows is recorded with `common.perplexity`, as compare.py measures its rows.

Each JSON holds `layers` {name: bits}, the budget, the average bits by our accounting (weights only,
sum n_l b_l / sum n_l over the Linear layers of the blocks; `lm_head` float), AutoScheme's wall time
and the versions. `python -m benchmarks.compare --policy-file autoscheme=PATH` packs it with our
pipeline (the same GPTQ rounding, calibration and group size as every other row).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from .. import assets, common
from .policy_file import windows_digest

BITS = (2, 3, 4, 8)
GROUP_SIZE = 64
SEQ_LEN = 128
BATCH = 4
DATASET_LABEL = "infoq-calibration-windows"  # AutoRound wants a dataset name; this one is served from memory


def tiny_llama(seed: int, n_calib: int):
    """compare.py's random tiny Llama (the same config and seed, so the same layer names) on random
    tokens, and SmolLM2's tokenizer as a stand-in (AutoRound wants one; the tokens never go through it)."""
    model = common.tiny_random_llama(seed)
    gen = torch.Generator().manual_seed(seed)

    def batches(n):
        out = []
        for _ in range(n):
            ids = torch.randint(0, 256, (BATCH, 32), generator=gen)
            out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
        return out

    calib, dev, test = batches(n_calib), batches(1), batches(1)
    _, tok = assets.load_smollm2()
    return model, tok, calib, dev, test


def block_linears(model) -> dict[str, int]:
    """The layers our compare quantizes: every nn.Linear but `lm_head`, with its weight count."""
    return {
        name: m.weight.numel()
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and name != "lm_head"
    }


SERVED = {"loaders": 0}  # how many times AutoRound took our windows (recorded, so a run shows it used them)


def serve_calibration(calib: list[dict]):
    """Make AutoRound's calibration loader (read by name) hand out `calib`, for DATASET_LABEL only."""
    import auto_round.auto_scheme.delta_loss as delta_loss
    import auto_round.calib_dataset as calib_dataset

    original = calib_dataset.get_dataloader
    seqlen = calib[0]["input_ids"].shape[1]

    def loader(tokenizer, seqlen_asked, dataset_name=None, *args, **kwargs):
        if dataset_name != DATASET_LABEL:
            return original(tokenizer, seqlen_asked, dataset_name, *args, **kwargs)
        if seqlen_asked != seqlen:
            raise RuntimeError(f"AutoRound asked for {seqlen_asked}-token windows; ours are {seqlen}")
        SERVED["loaders"] += 1
        return [dict(b) for b in calib]

    calib_dataset.get_dataloader = loader
    delta_loss.get_dataloader = loader


def grid_levels_ok(model, layers: dict[str, int]) -> bool:
    """Whether every layer's weights hold at most 2^bits values per group of GROUP_SIZE inputs (the
    fake-quantized model AutoRound returns really is quantized at the widths it chose)."""
    for name, bits in layers.items():
        w = model.get_submodule(name).weight.detach()
        if w.shape[1] % GROUP_SIZE:
            continue
        groups = w.reshape(-1, GROUP_SIZE)
        if (groups.sort(dim=1).values.diff(dim=1) != 0).sum(dim=1).max().item() + 1 > 2**bits:
            return False
    return True


def run_one(model, tok, calib, avg_bits: float, own_eval: bool, dev, test) -> dict:
    import auto_round
    from auto_round import AutoRound, AutoScheme
    from auto_round.auto_scheme import gen_auto_scheme
    from auto_round.schemes import QuantizationScheme

    SERVED["loaders"] = 0
    options = [QuantizationScheme(bits=b, group_size=GROUP_SIZE, sym=False, data_type="int", act_bits=16) for b in BITS]
    n_windows = sum(len(b["input_ids"]) for b in calib)
    seqlen = calib[0]["input_ids"].shape[1]
    scheme = AutoScheme(
        avg_bits=avg_bits,
        options=options,
        ignore_scale_zp_bits=True,
        nsamples=n_windows,
        seqlen=seqlen,
        batch_size=BATCH,
        device_map="cpu",
        enable_torch_compile=False,
        low_cpu_mem_usage=False,  # its offload reloads blocks from checkpoint files; this model is in memory
    )
    timing = {}
    generate = gen_auto_scheme.GenScheme.get_layer_config

    def timed(self):
        t = time.perf_counter()
        try:
            return generate(self)
        finally:
            timing["autoscheme_wall_s"] = time.perf_counter() - t

    gen_auto_scheme.GenScheme.get_layer_config = timed
    try:
        ar = AutoRound(
            model,
            tokenizer=tok,
            scheme=scheme,
            iters=0,
            dataset=DATASET_LABEL,
            nsamples=n_windows,
            seqlen=seqlen,
            batch_size=BATCH,
            device_map="cpu",
            enable_torch_compile=False,
        )
        t = time.perf_counter()
        qmodel, layer_config = ar.quantize()
        total = time.perf_counter() - t
    finally:
        gen_auto_scheme.GenScheme.get_layer_config = generate
    sizes = block_linears(qmodel)
    missing = [n for n in sizes if n not in layer_config]
    if missing:
        raise RuntimeError(f"AutoScheme gave no scheme for {len(missing)} layers, e.g. {missing[:3]}")
    layers = {n: int(layer_config[n]["bits"]) for n in sizes}
    off = {n: b for n, b in layers.items() if b not in BITS}
    if off:
        raise RuntimeError(f"AutoScheme chose widths outside {BITS}: {dict(list(off.items())[:3])}")
    groups = {int(layer_config[n].get("group_size") or 0) for n in sizes}
    reached = sum(layers[n] * sizes[n] for n in sizes) / sum(sizes.values())
    record = {
        "peer": "AutoRound AutoScheme",
        "versions": {"auto_round": auto_round.__version__, "torch": torch.__version__},
        "target_avg_bits": avg_bits,
        "avg_bits": reached,
        "candidate_bits": list(BITS),
        "group_size": GROUP_SIZE,
        "group_sizes_chosen": sorted(groups),
        "calibration": {"windows": n_windows, "seq_len": seqlen},
        "autoscheme_wall_s": timing.get("autoscheme_wall_s"),
        "layers": layers,
    }
    record["calibration"]["loaders_served"] = SERVED["loaders"]
    if own_eval:
        record["eval_windows"] = {
            "dev": sum(len(b["input_ids"]) for b in dev),
            "test": sum(len(b["input_ids"]) for b in test),
            "sha256": windows_digest(dev + test),
        }
        opt_rtn = not getattr(getattr(ar, "quantize_config", None), "disable_opt_rtn", True)
        record["own"] = {
            "rounding": f"AutoRound iters=0 ({'optimized RTN, its default' if opt_rtn else 'plain RTN'})",
            "grid_check": grid_levels_ok(qmodel, layers),
            "quantize_wall_s": total,
            "dev_ppl": common.perplexity(qmodel, dev) if dev else None,
            "test_ppl": common.perplexity(qmodel, test),
        }
    return record


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=["smollm2", "tiny_llama"], default="smollm2")
    p.add_argument("--avg-bits", type=float, nargs="+", default=[3.0, 3.5])
    p.add_argument("--calib", type=int, default=32, help="calibration windows (smollm2: 128 tokens each)")
    p.add_argument("--dev", type=int, default=common.DEV_WINDOWS)
    p.add_argument("--eval", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--own-eval", action="store_true", help="also AutoRound's own end-to-end RTN and its perplexity")
    p.add_argument("--out", default="benchmarks/results/policies")
    args = p.parse_args(argv)
    if args.model == "smollm2":
        model, tok, calib, dev, test = common.smollm2_data(args.calib, args.dev, args.eval)
    else:
        model, tok, calib, dev, test = tiny_llama(args.seed, max(1, args.calib // BATCH))
    serve_calibration(calib)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for avg_bits in args.avg_bits:
        with tempfile.TemporaryDirectory(prefix="autoscheme-cache-") as cache:
            os.environ["AR_AUTO_SCHEME_CACHE"] = cache  # score from scratch: no earlier run's scores
            record = run_one(copy.deepcopy(model), tok, calib, avg_bits, args.own_eval, dev, test)
        record["model"] = args.model
        record["machine"] = common.machine()
        path = out / f"autoscheme_{args.model}_{avg_bits:g}.json"
        path.write_text(json.dumps(record, indent=1) + "\n")
        widths = {b: sum(1 for v in record["layers"].values() if v == b) for b in BITS}
        print(
            f"{path}: target {avg_bits}, reached {record['avg_bits']:.4f} (our accounting), layers per width "
            f"{widths}, AutoScheme {record['autoscheme_wall_s']:.1f} s"
            + (f", own dev/test ppl {record['own']['dev_ppl']} / {record['own']['test_ppl']}" if args.own_eval else ""),
            flush=True,
        )


if __name__ == "__main__":
    main()
