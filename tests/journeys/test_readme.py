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
