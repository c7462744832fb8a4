"""The README's plain `nn.Module` quick start runs as pasted (in a scratch folder) and leaves a
checkpoint that reloads."""

import os
import re
import runpy
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readme_module_snippet_runs_as_pasted(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    snippet = next(b for b in blocks if "nn.Module" in b and "save_quantized" in b)
    (tmp_path / "snippet.py").write_text(snippet)
    monkeypatch.chdir(tmp_path)
    scope = runpy.run_path(str(tmp_path / "snippet.py"))
    assert sorted(os.listdir(tmp_path / "cnn_out")) == ["infoq_config.json", "model.safetensors"]
    assert (tmp_path / "scores.json").exists()
    policy, reloaded = scope["policy"], scope["reloaded"]
    assert policy.report.refinement.kept in ("ilp", f"uniform-{max(b for b in (2, 3, 4, 8) if b <= 4.0)}")
    assert type(reloaded) is type(scope["model"])


def test_the_readme_transformers_snippet_runs_as_pasted_with_a_local_folder(tmp_path, monkeypatch):
    """The quantize-on-load quick start, with its Hub id replaced by a local tiny Llama folder (no Hub here)
    and `calib.txt` written where it reads it."""
    from tests.helpers.models import tiny_llama
    from tests.helpers.text import word_tokenizer

    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    snippet = next(b for b in blocks if "quantization_config=config" in b)
    hub_id = re.search(r'model_id = "([^"]+)"', snippet).group(1)
    words = [f"w{i}" for i in range(120)]
    folder = tmp_path / "tiny-llama"
    tiny_llama(pad_token_id=None, max_position_embeddings=256).save_pretrained(folder)
    word_tokenizer(words).save_pretrained(folder)
    lines = [" ".join(words[(i * 7 + j) % len(words)] for j in range(160)) for i in range(40)]
    (tmp_path / "calib.txt").write_text("\n".join(lines))
    (tmp_path / "snippet.py").write_text(snippet.replace(hub_id, str(folder)))
    monkeypatch.chdir(tmp_path)
    scope = runpy.run_path(str(tmp_path / "snippet.py"))
    summary = scope["infoq_hf"].quantization_result(scope["reloaded"]).summary
    assert summary["avg_bits"] <= 3.0 and summary["rounding"] == "gptq"
    assert {"config.json", "model.safetensors", "tokenizer.json", "README.md"} <= set(os.listdir(tmp_path / "out"))
