"""Peak memory and wall time of an InfoQ search, this tree against an earlier commit.

    python -m benchmarks.studies.search_memory            # SmolLM2-135M: this tree vs 377696f^ (before the
                                                          # reference pass kept only argmax)
    python -m benchmarks.studies.search_memory --before REV --calib 16
    python -m benchmarks.studies.search_memory --tiny --before f754775   # a tiny Llama with a 32,000-token
                                                          # vocabulary and 32x256 calibration tokens (batches of 4)

`--tiny` reports the search's peak RSS increase over the calibration set's logits (fp32, all batches
together): a search that holds one batch's logits at a time stays well below 1. Its sizes:
`--vocab`, `--calib` (windows of 256 tokens), `--batch`.

Each side runs in a fresh child process (its peak RSS is its own `ru_maxrss`) that imports
`infoq_hf` from its tree (REV is checked out with `git worktree` into a temporary folder), loads
the same fp32 model and the same calibration batches (16 x 128 tokens of the calibration works,
batches of 4, written once by this process) and runs `search(method="infoq")` with that tree's
defaults, candidates {2,3,4,8}, group 64, `lm_head` float. Writes
benchmarks/results/search_memory_smollm2.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from .. import common
from ..assets import smollm2_dir

DEFAULT_BEFORE = "377696f^"
CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
import torch, transformers
import infoq_hf
from infoq_hf import search
batches = torch.load(sys.argv[2])
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[3], dtype=torch.float32).eval()
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter()
table = search(model, batches, bits=(2, 3, 4, 8), method="infoq", group_size=64, skip_modules=["lm_head"],
               progress=False)
wall = time.perf_counter() - t
print(json.dumps({"infoq_hf": infoq_hf.__file__, "rss_loaded_mib": loaded, "wall_s": wall, "layers": len(table.layers),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

TINY_CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, sys.argv[1])
import torch, transformers
import infoq_hf
from infoq_hf import search
vocab, windows, batch = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
torch.manual_seed(0)
model = transformers.LlamaForCausalLM(config).eval()
gen = torch.Generator().manual_seed(0)
batches = [{"input_ids": torch.randint(0, vocab, (batch, 256), generator=gen)} for _ in range(windows // batch)]
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t = time.perf_counter()
table = search(model, batches, bits=(2, 3, 4, 8), method="infoq", skip_modules=["lm_head"], progress=False)
wall = time.perf_counter() - t
print(json.dumps({"infoq_hf": infoq_hf.__file__, "rss_loaded_mib": loaded, "wall_s": wall, "layers": len(table.layers),
                  "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_side(tree: Path, batches_file: Path, model_dir: Path, child: str = CHILD, extra=()) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", child, str(tree), str(batches_file), str(model_dir), *map(str, extra)],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"the search in {tree} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", default=DEFAULT_BEFORE, help=f"the earlier commit (default {DEFAULT_BEFORE})")
    p.add_argument(
        "--calib",
        type=int,
        default=None,
        help="calibration windows: of 128 tokens (default 16), with --tiny of 256 tokens (default 32)",
    )
    p.add_argument("--only-this-tree", action="store_true", help="skip the earlier commit")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--tiny", action="store_true", help="the tiny Llama (no assets needed) instead of SmolLM2")
    p.add_argument("--vocab", type=int, default=32000, help="--tiny: vocabulary size (default 32000)")
    p.add_argument("--batch", type=int, default=4, help="--tiny: windows per batch (default 4)")
    args = p.parse_args(argv)
    repo = Path(__file__).resolve().parents[2]
    if args.tiny:
        return main_tiny(args, repo)
    args.calib = args.calib or 16
    _, _, calib, _, _ = common.smollm2_data(args.calib, 0, 0)
    with tempfile.TemporaryDirectory() as tmp:
        batches_file = Path(tmp) / "calib.pt"
        torch.save(calib, batches_file)
        rows = with_tree(
            repo,
            None if args.only_this_tree else args.before,
            lambda tree: run_side(tree, batches_file, smollm2_dir()),
        )
    lines = [
        f"InfoQ search on SmolLM2-135M fp32, {args.calib}x128 calibration tokens (batches of 4), candidates "
        f"{{2,3,4,8}}, group 64, `lm_head` float, each tree's defaults; one fresh process per tree; "
        f"{common.machine()}.",
        "",
        "| tree | RSS after load MiB | peak RSS MiB | search wall s |",
        "|---|---|---|---|",
    ]
    for label, r in rows.items():
        lines.append(f"| {label} | {r['rss_loaded_mib']:.0f} | {r['peak_rss_mib']:.0f} | {r['wall_s']:.1f} |")
    lines += ["", f"Command: `{' '.join(['python -m benchmarks.studies.search_memory', *sys.argv[1:]])}`"]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    name = "search_memory_smollm2_this_tree.md" if args.only_this_tree else "search_memory_smollm2.md"
    (Path(args.out) / name).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def with_tree(repo: Path, before: str | None, measure) -> dict:
    """`measure(tree)` for the earlier commit `before` (checked out in a temporary worktree) and this tree."""
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        worktree = Path(tmp) / "before"
        if before:
            subprocess.run(
                ["git", "-C", str(repo), "worktree", "add", "--detach", str(worktree), before],
                check=True,
                capture_output=True,
            )
        try:
            if before:
                rev = subprocess.run(
                    ["git", "-C", str(worktree), "rev-parse", "--short", "HEAD"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.strip()
                label = f"before ({before} = {rev})"
                rows[label] = measure(worktree)
                print(label, rows[label], flush=True)
            rows["this tree"] = measure(repo)
            print("this tree", rows["this tree"], flush=True)
        finally:
            if before:
                subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(worktree)], check=False)
    return rows


def main_tiny(args, repo: Path):
    windows = args.calib or 32
    logits_mib = windows * 256 * args.vocab * 4 / 2**20
    rows = with_tree(
        repo,
        None if args.only_this_tree else args.before,
        lambda tree: run_side(tree, Path(), Path(), TINY_CHILD, (args.vocab, windows, args.batch)),
    )
    lines = [
        f"InfoQ search (defaults, candidates {{2,3,4,8}}, `lm_head` float) on a tiny Llama (2 blocks, width 64, "
        f"vocabulary {args.vocab}), {windows}x256 calibration tokens in batches of {args.batch}: the calibration "
        f"set's logits take {logits_mib:.0f} MiB in fp32; one fresh process per tree; {common.machine()}.",
        "",
        "| tree | RSS after load MiB | peak RSS MiB | peak increase MiB | increase / set's logits | search wall s |",
        "|---|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        rise = r["peak_rss_mib"] - r["rss_loaded_mib"]
        lines.append(
            f"| {label} | {r['rss_loaded_mib']:.0f} | {r['peak_rss_mib']:.0f} | {rise:.0f} | "
            f"{rise / logits_mib:.2f} | {r['wall_s']:.1f} |"
        )
    lines += ["", f"Command: `{' '.join(['python -m benchmarks.studies.search_memory', *sys.argv[1:]])}`"]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "search_memory_tiny_llama.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
