"""Saves leave no stale weights or staging folders and give identical bytes for identical models; every
stored tensor's digest is checked on load, a mismatch names the tensor; crafted headers are refused."""

from __future__ import annotations

import json
import logging
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import infoq_hf
from infoq_hf import InfoQConfig, load_quantized, quantize_model, save_quantized
from infoq_hf.checkpoint_info import read_checkpoint
from tests.helpers.models import tiny_llama

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
X = torch.randn(3, 16, generator=torch.Generator().manual_seed(5))
IDS = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(3))


def _mlp(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


def _packed_mlp(bits=4, seed=0) -> nn.Module:
    return quantize_model(_mlp(seed), {"0": bits, "2": bits})


@pytest.fixture(scope="module")
def llama_float_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama_float")
    tiny_llama().save_pretrained(path)
    return path


def _packed_llama(float_dir, bits):
    return AutoModelForCausalLM.from_pretrained(
        float_dir, quantization_config=InfoQConfig(policy={"re:model\\.layers\\..*": bits}, group_size=32)
    )


def _logits(directory) -> torch.Tensor:
    with torch.no_grad():
        return AutoModelForCausalLM.from_pretrained(directory)(IDS).logits


def _header(path: Path) -> tuple[dict, int]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), 8 + n


# ----------------------------------------------------------------------------- stale files
def test_no_weights_of_a_previous_save_survive_beside_a_new_one(llama_float_dir, tmp_path):
    target = tmp_path / "ckpt"
    old, new = _packed_llama(llama_float_dir, 4), _packed_llama(llama_float_dir, 4)
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.5)  # same policy, other weights: loading the old file would go unnoticed
        new_logits = new(IDS).logits
    old.save_pretrained(target)
    new.save_pretrained(target, max_shard_size="20KB")  # transformers' own save leaves the old file: refused on load
    with pytest.raises(ValueError, match="weights of two different saves"):
        _logits(target)
    infoq_hf.save(new, target, max_shard_size="20KB")  # the library's save removes it
    names = sorted(p.name for p in target.iterdir())
    assert "model.safetensors" not in names and "model.safetensors.index.json" in names
    assert sum(n.endswith(".safetensors") for n in names) > 1
    assert torch.equal(_logits(target), new_logits)

    (target / "notes.safetensors").write_bytes(b"mine")  # not a name a save writes: kept
    infoq_hf.save(old, target)  # and back to one file: the shards and their index go
    with torch.no_grad():
        old_logits = old(IDS).logits
    assert sorted(p.name for p in target.iterdir() if "safetensors" in p.name) == [
        "model.safetensors",
        "notes.safetensors",
    ]
    assert torch.equal(_logits(target), old_logits)


def test_a_killed_saves_staging_folder_is_removed_by_the_next_save(tmp_path):
    target = tmp_path / "ckpt"
    save_quantized(_packed_mlp(), target)
    for where in (target, tmp_path / "fresh"):  # inside an existing checkpoint, beside a new one
        script = textwrap.dedent(f"""
            import os, signal, sys
            sys.path.insert(0, {str(ROOT)!r})
            from infoq_hf.checkpoint import atomic_checkpoint
            with atomic_checkpoint({str(where)!r}) as staging:
                (staging / "model.safetensors").write_bytes(b"half")
                os.kill(os.getpid(), signal.SIGKILL)
        """)
        done = subprocess.run([sys.executable, "-c", script], capture_output=True)
        assert done.returncode == -9, done.stderr
    left = sorted(p.name for p in [*target.iterdir(), *tmp_path.iterdir()] if p.name.startswith(".infoq-save-"))
    assert len(left) == 2
    live = target / f".infoq-save-{os.getpid()}@00000000.0000abcd"  # another host's, or a live save's: kept
    live.mkdir()
    save_quantized(_packed_mlp(), target)
    save_quantized(_packed_mlp(), tmp_path / "fresh")
    assert [p.name for p in target.iterdir() if p.name.startswith(".")] == [live.name]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_identical_saves_are_byte_identical(tmp_path, llama_float_dir):
    model = _packed_mlp()
    for i in range(6):  # safetensors writes the metadata in a random order: one pair could agree by chance
        save_quantized(model, tmp_path / f"m{i}")
    assert len({(tmp_path / f"m{i}" / "model.safetensors").read_bytes() for i in range(6)}) == 1
    header, _ = _header(tmp_path / "m0" / "model.safetensors")
    assert list(header["__metadata__"]) == sorted(header["__metadata__"])
    llama = _packed_llama(llama_float_dir, 3)
    infoq_hf.save(llama, tmp_path / "c")  # the library's save (safetensors itself orders metadata at random)
    infoq_hf.save(llama, tmp_path / "d")
    for name in ("model.safetensors", "config.json"):
        assert (tmp_path / "c" / name).read_bytes() == (tmp_path / "d" / name).read_bytes()


# ----------------------------------------------------------------------------- digests
def _flip(path: Path, key: str, byte: int = 0) -> None:
    header, start = _header(path)
    raw = bytearray(path.read_bytes())
    raw[start + header[key]["data_offsets"][0] + byte] ^= 0x10
    path.write_bytes(bytes(raw))


def _swap(path: Path, a: str, b: str) -> None:
    header, start = _header(path)
    (a0, a1), (b0, b1) = header[a]["data_offsets"], header[b]["data_offsets"]
    assert a1 - a0 == b1 - b0
    raw = bytearray(path.read_bytes())
    raw[start + a0 : start + a1], raw[start + b0 : start + b1] = (
        raw[start + b0 : start + b1],
        raw[start + a0 : start + a1],
    )
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("key", ["0.weight_packed", "0.weight_scale", "2.bias"])
def test_a_flipped_bit_is_named_by_load_quantized_and_report(tmp_path, key):
    save_quantized(_packed_mlp(), tmp_path / "m")
    _flip(tmp_path / "m" / "model.safetensors", key)
    with pytest.raises(ValueError, match=f"tensor '{key}' does not match the digest"):
        load_quantized(tmp_path / "m", model=_mlp())
    with pytest.raises(ValueError, match=f"tensor '{key}' does not match the digest"):
        read_checkpoint(tmp_path / "m")


def test_corrupt_or_swapped_tensors_are_refused_by_from_pretrained(llama_float_dir, tmp_path):
    _packed_llama(llama_float_dir, 4).save_pretrained(tmp_path / "c")
    weights = tmp_path / "c" / "model.safetensors"
    clean = weights.read_bytes()
    header, _ = _header(weights)
    assert set(json.loads(header["__metadata__"]["infoq_xxh3_128"])) == set(header) - {"__metadata__"}
    _swap(weights, "model.layers.0.self_attn.q_proj.weight_packed", "model.layers.0.self_attn.o_proj.weight_packed")
    with pytest.raises(ValueError, match=r"self_attn\.(q|o)_proj\.weight_packed' does not match the digest"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "c")
    weights.write_bytes(clean)
    _swap(weights, "model.layers.0.mlp.up_proj.weight_scale", "model.layers.1.mlp.up_proj.weight_scale")
    with pytest.raises(ValueError, match=r"layers\.[01]\.mlp\.up_proj\.weight_scale' does not match the digest"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "c")
    weights.write_bytes(clean)
    _flip(weights, "model.norm.weight", 1)
    with pytest.raises(ValueError, match="'model.norm.weight' does not match the digest"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "c")


def test_a_checkpoint_without_digests_loads_with_a_note(tmp_path, caplog):
    from safetensors.torch import load_file, save_file

    model = _packed_mlp()
    save_quantized(model, tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    header, _ = _header(weights)
    meta = {k: v for k, v in header["__metadata__"].items() if k != "infoq_xxh3_128"}
    save_file(load_file(weights), weights, metadata=meta)  # as an older version wrote it
    with caplog.at_level(logging.WARNING, logger="infoq_hf"):
        with torch.no_grad():
            assert torch.equal(load_quantized(tmp_path / "m", model=_mlp(9))(X), model(X))
    assert "holds no tensor digests" in caplog.text


# ----------------------------------------------------------------------------- crafted headers
def _with_tied_header(path: Path, aliases: dict) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), framework="pt") as handle:
        meta = dict(handle.metadata())
    meta["infoq_tied"] = json.dumps(aliases)
    meta.pop("infoq_xxh3_128", None)
    save_file(load_file(path), path, metadata=meta)


@pytest.mark.parametrize(
    "aliases, message",
    [
        ({"2.bias": "0.bias"}, "names the stored tensor '2.bias' as a copy"),
        ({"3.bias": "missing.bias"}, "which the file does not store"),
        (["0.bias"], "not a JSON object"),
    ],
)
def test_crafted_tied_aliases_are_refused(tmp_path, aliases, message):
    save_quantized(_packed_mlp(), tmp_path / "m")
    _with_tied_header(tmp_path / "m" / "model.safetensors", aliases)
    with pytest.raises(ValueError, match=message):
        load_quantized(tmp_path / "m", model=_mlp())


def test_header_json_object_reads_an_object_and_refuses_anything_else():
    from infoq_hf.integrity import IntegrityError, header_json_object

    assert header_json_object(None, "k", "f", "fix") is None
    assert header_json_object({"other": "{}"}, "k", "f", "fix") is None
    assert header_json_object({"k": '{"a": [1, 2]}'}, "k", "f", "fix") == {"a": [1, 2]}
    for raw in ("{not json", "[1, 2]", "3", '"text"', "null"):
        with pytest.raises(ValueError, match=r"^f: its 'k' header entry is not a JSON object; save again$"):
            header_json_object({"k": raw}, "k", "f", "save again")
    with pytest.raises(IntegrityError, match="is not a mapping; fix"):
        header_json_object({"k": "[]"}, "k", "f", "fix", error=IntegrityError, what="a mapping")


@pytest.mark.parametrize(
    "key, raw, read, message",
    [
        (
            "infoq_xxh3_128",
            "[]",
            "digests",
            "'infoq_xxh3_128' header entry is not a JSON object of digests; the file is corrupt",
        ),
        (
            "infoq_layers",
            "[1]",
            "layers",
            "'infoq_layers' header entry is not a JSON object; the file is corrupt or was edited",
        ),
        ("infoq_summary", "{bad", "summary", "'infoq_summary' header entry is not a JSON object; re-save the model"),
    ],
)
def test_a_header_entry_that_is_not_a_json_object_is_refused_by_its_reader(tmp_path, key, raw, read, message):
    from safetensors.torch import load_file, save_file

    from infoq_hf.integrations.transformers import stored_summary
    from infoq_hf.integrity import IntegrityError, stored_digests

    save_quantized(_packed_mlp(), tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    header, _ = _header(weights)
    meta = {k: v for k, v in header["__metadata__"].items() if k != "infoq_xxh3_128"}
    save_file(load_file(weights), weights, metadata={**meta, key: raw})
    readers = {
        "digests": (IntegrityError, lambda: stored_digests(weights)),
        "layers": (ValueError, lambda: read_checkpoint(tmp_path / "m")),
        "summary": (ValueError, lambda: stored_summary([weights])),
    }
    error, call = readers[read]
    with pytest.raises(error, match=message):
        call()
