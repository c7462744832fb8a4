"""Bad search input gets an error naming the problem and the fix, at any batch; a table whose scores cannot
tell layers apart is flagged; a saved table records no local path. Tiny models; no network."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from infoq_hf import search
from infoq_hf.sensitivity.search import model_identity, public_model_name


def _mlp(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)).eval()


def _batches(n=4, size=16):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(size, 16, generator=g), torch.randint(0, 8, (size,), generator=g)) for _ in range(n)]


def test_a_batch_the_model_cannot_run_is_named_at_any_index():
    batches = _batches()
    batches[3] = (torch.randn(16, 12), batches[3][1])
    with pytest.raises(ValueError, match=r"cannot run calibration batch 3 \(tensor shapes \{'inputs': \[16, 12\]"):
        search(_mlp(), batches, bits=(2, 4), method="weight_mse")


def test_mixed_batch_kinds_and_meta_tensors_are_refused():
    batches = _batches()
    batches[2] = {"inputs": batches[2][0]}
    with pytest.raises(ValueError, match="calibration batch 2 is a mapping.*same structure"):
        search(_mlp(), batches, bits=(2, 4), method="weight_mse")
    batches = _batches()
    batches[1] = (torch.empty(16, 16, device="meta"), batches[1][1])
    with pytest.raises(ValueError, match="calibration batch 1: 'inputs' is on the meta device"):
        search(_mlp(), batches, bits=(2, 4), method="weight_mse")
    with torch.device("meta"):
        model = _mlp()
    with pytest.raises(ValueError, match="meta device"):
        search(model, _batches(), bits=(2, 4), method="weight_mse")


@pytest.mark.parametrize("bits", [None, "4", 4.0])
def test_bits_must_be_widths(bits):
    with pytest.raises(ValueError, match="bits must be the candidate bit-widths"):
        search(_mlp(), _batches(), bits=bits, method="weight_mse")


def test_identical_scores_for_every_layer_warn():
    model = _mlp()
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.zero_()  # nothing to round: every layer's score is 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = search(model, _batches(), bits=(2, 4), method="weight_mse")
    assert table.layers["0"]["w"] == table.layers["2"]["w"]
    assert any("every layer got the same" in str(w.message) for w in caught)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        search(_mlp(), _batches(), bits=(2, 4), method="weight_mse")  # real scores: no warning


def test_no_local_path_is_recorded(tmp_path):
    folder = tmp_path / "alice" / "my-model"
    folder.mkdir(parents=True)
    assert public_model_name(str(folder)) == "my-model"
    assert public_model_name(str(folder) + "/") == "my-model"
    assert public_model_name("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    assert public_model_name("~/models/x") == "x"
    model = _mlp()
    model.config = SimpleNamespace(_name_or_path=str(folder))
    meta = model_identity(model, {"0": model[0]})
    assert meta["name_or_path"] == "my-model" and str(tmp_path) not in str(meta)
