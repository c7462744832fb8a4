"""Crafted input fails fast and clearly: policy regexes in linear time, JSON files and `architectures`
named in the error. Tiny models; no network."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch.nn as nn

from infoq_hf import InfoQConfig, load_quantized, quantize_model, save_quantized
from infoq_hf.checkpoint_info import read_checkpoint
from infoq_hf.linear_regex import LinearRegex
from tests.helpers.models import tiny_llama

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
PATTERNS = [
    r"model\.layers\..*",
    r".*\.(q|k|v)_proj",
    r"layers\.\d+\.mlp\..*",
    r"(a|ab)*c?",
    r"[^.]+\.[0-9]{1,2}",
    r"x{2,3}y*",
    r"^a.*b$",
    r".*?proj",
    r"[\w]+",
    r"\s*\S+",
    r"a(b|)+c",
    r"(a*)*b",
    r"(a|b)*\.c",
    r"a?b+\.",
    r"[ab]{0,3}c",
    r"[^a-c]*Z",
]


def test_linear_regex_agrees_with_re_fullmatch():
    rng = random.Random(0)
    names = [
        "model.layers.0.mlp.up_proj",
        "model.layers.12.self_attn.q_proj",
        "lm_head",
        "ab",
        "ababc",
        "aab.12",
        "xxy",
        "xxxyy",
        "Z",
        "..Z",
        "proj",
        "",
        " a",
        "ac",
        "abbc",
        "aaab",
    ]
    names += ["".join(rng.choice("ab.cxyZ1 ") for _ in range(rng.randint(0, 7))) for _ in range(300)]
    for pattern in PATTERNS:
        ours, theirs = LinearRegex(pattern), re.compile(pattern)
        for name in names:
            assert bool(ours.fullmatch(name)) == bool(theirs.fullmatch(name)), (pattern, name)
    for unsupported in (r"(a)\1", r"(?=a)b", r"(?i)a", r"\bx"):
        with pytest.raises(re.error, match="not supported"):
            LinearRegex(unsupported)


def test_a_catastrophic_policy_regex_in_config_json_does_not_hang(tmp_path):
    folder = tmp_path / "c"
    AutoModelForCausalLM.from_pretrained(
        _float_dir(tmp_path), quantization_config=InfoQConfig(policy={"re:model\\.layers\\..*": 4}, group_size=32)
    ).save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"]["policy"] = {"re:(.|.)*Z": 4, **cfg["quantization_config"]["policy"]}
    (folder / "config.json").write_text(json.dumps(cfg))
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        import infoq_hf
        from infoq_hf.policy import BitPolicy
        names = ["model.layers.10.self_attn.q_proj" * 3, "aZ"]
        resolved = BitPolicy({{"re:(.|.)*Z": 4, "re:.*": 8}}).resolve(names)
        assert resolved[names[0]].w_bits == 8 and resolved["aZ"].w_bits == 4
        from transformers import AutoModelForCausalLM
        try:
            AutoModelForCausalLM.from_pretrained({str(folder)!r})
        except ValueError as e:
            print(e)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "policy regex 're:(.|.)*Z' matches no quantizable layer" in done.stdout


def _float_dir(tmp_path):
    path = tmp_path / "float"
    if not path.exists():
        tiny_llama().save_pretrained(path)
    return path


def _mlp():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


def test_a_json_file_that_is_not_json_is_named(tmp_path):
    save_quantized(quantize_model(_mlp(), {"0": 4, "2": 4}), tmp_path / "m")
    (tmp_path / "m" / "infoq_config.json").write_text("{not json")
    for load in (lambda: load_quantized(tmp_path / "m", model=_mlp()), lambda: read_checkpoint(tmp_path / "m")):
        with pytest.raises(ValueError, match=r"infoq_config\.json is not valid JSON"):
            load()


def test_crafted_architectures_are_refused_naming_the_field(tmp_path):
    folder = tmp_path / "c"
    AutoModelForCausalLM.from_pretrained(
        _float_dir(tmp_path), quantization_config=InfoQConfig(policy={"re:model\\.layers\\..*": 4}, group_size=32)
    ).save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    for archs in (["pipeline"], [3]):
        cfg["architectures"] = archs
        (folder / "config.json").write_text(json.dumps(cfg))
        with pytest.raises(ValueError, match="'architectures'"):
            read_checkpoint(folder)


def test_push_stages_only_the_checkpoints_own_files_and_never_follows_links(tmp_path, caplog):
    from infoq_hf.hub import prepare_upload_folder

    source = tmp_path / "ckpt"
    save_quantized(quantize_model(_mlp(), {"0": 4, "2": 4}), source)
    secret = tmp_path / "id_rsa"
    secret.write_text("PRIVATE KEY")
    (source / "notes.txt").symlink_to(secret)
    (source / "train.log").write_text("mine")
    (source / "runs").mkdir()
    (source / "runs" / "a.txt").write_text("run")
    (source / "runs" / "key").symlink_to(secret)
    with caplog.at_level("WARNING", logger="infoq_hf"):
        prepare_upload_folder(source, tmp_path / "up", "user/m")
    staged = sorted(p.name for p in (tmp_path / "up").iterdir())
    assert not {"notes.txt", "train.log", "runs"} & set(staged)
    assert {"model.safetensors", "infoq_config.json", "README.md"} <= set(staged)
    assert "['notes.txt', 'runs', 'train.log']" in caplog.text
    prepare_upload_folder(source, tmp_path / "up2", "user/m", include=["train.log", "runs"])
    assert (tmp_path / "up2" / "train.log").read_text() == "mine"
    assert sorted(p.name for p in (tmp_path / "up2" / "runs").iterdir()) == ["a.txt"]
    assert not any("PRIVATE" in p.read_text(errors="replace") for p in (tmp_path / "up2").rglob("*") if p.is_file())
    with pytest.raises(ValueError, match="symbolic link"):
        prepare_upload_folder(source, tmp_path / "up3", "user/m", include=["notes.txt"])


@pytest.mark.parametrize("bits", [8, 3, 2])
def test_report_refuses_an_edited_plain_module_checkpoint_as_load_quantized_does(tmp_path, bits):
    folder = tmp_path / "m"
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    save_quantized(quantize_model(model, {"0": 4, "2": 4}), folder)
    read_checkpoint(folder)  # the unedited folder reads
    cfg = json.loads((folder / "infoq_config.json").read_text())
    cfg["policy"]["0"] = {**cfg["policy"]["0"], "w_bits": bits} if isinstance(cfg["policy"]["0"], dict) else bits
    (folder / "infoq_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="does not match its policy: layer '0'"):
        load_quantized(folder, model=nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 8)))
    with pytest.raises(ValueError, match="does not match its policy: layer '0'"):
        read_checkpoint(folder)
