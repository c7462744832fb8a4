"""Load-time cost of checking every tensor's SHA-256 digest: SmolLM2-135M packed at 3 bits (RTN, every
decoder layer), `from_pretrained` timed with and without the check, interleaved, median of --repeats.

    python -m benchmarks.integrity_cost                      # builds the 3-bit checkpoint once under --work
    python -m benchmarks.integrity_cost --checkpoint DIR     # any saved infoq checkpoint (a tiny one to try it)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from infoq_hf import InfoQConfig
from infoq_hf.integrity import SKIP_ENV


def build_checkpoint(folder: Path) -> Path:
    from transformers import AutoModelForCausalLM

    from . import assets

    if not (folder / "config.json").is_file():
        config = InfoQConfig(policy={"re:model\\.layers\\..*": 3}, group_size=64, rounding="rtn")
        AutoModelForCausalLM.from_pretrained(assets.smollm2_dir(), quantization_config=config).save_pretrained(folder)
    return folder


def load_seconds(folder: Path, check: bool) -> float:
    from transformers import AutoModelForCausalLM

    os.environ[SKIP_ENV] = "0" if check else "1"
    start = time.perf_counter()
    AutoModelForCausalLM.from_pretrained(folder)
    return time.perf_counter() - start


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="a saved infoq checkpoint folder (default: build SmolLM2 3-bit)")
    p.add_argument(
        "--work",
        type=Path,
        default=Path("/tmp/infoq-smollm2-3bit"),
        help="where the 3-bit checkpoint is built once (default %(default)s)",
    )
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    folder = args.checkpoint or build_checkpoint(args.work)
    load_seconds(folder, True)  # warm the page cache and the imports
    times = {True: [], False: []}
    for _ in range(args.repeats):
        for check in (False, True):
            times[check].append(load_seconds(folder, check))
    os.environ.pop(SKIP_ENV, None)
    with_check, without = statistics.median(times[True]), statistics.median(times[False])
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    print(f"checkpoint {folder} ({size / 1e6:.1f} MB of safetensors), median of {args.repeats} loads")
    print(f"from_pretrained without the digest check: {without:.3f} s")
    print(f"from_pretrained with the digest check:    {with_check:.3f} s")
    print(f"ratio: {with_check / without:.3f} (extra {100 * (with_check / without - 1):.1f}%)")


if __name__ == "__main__":
    main()
