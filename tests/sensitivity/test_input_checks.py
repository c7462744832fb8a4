"""Bad search input gets an error naming the problem and the fix, at any batch (labels, widths, non-finite
values, raw torch errors); an infeasible budget is refused before any probing; a table whose scores cannot
tell layers apart is flagged; a saved table records no local path. Tiny models; no network."""

from __future__ import annotations

import sys
import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from infoq_hf import InfoQConfig, search
from infoq_hf.sensitivity.search import model_identity, public_model_name
from tests.helpers.models import tiny_llama


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


# ----------------------------------------------------------------------------- labels, widths, raw torch errors
def _classifier(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


def _labelled(n_batches=2, size=32, labels=None):
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n_batches):
        x = torch.randn(size, 16, generator=gen)
        y = torch.randint(0, 4, (size,), generator=gen) if labels is None else labels(size)
        out.append((x, y))
    return out


@pytest.mark.parametrize(
    "labels, message",
    [
        (lambda n: torch.randint(0, 4, (n,)).float(), "must be integer class indices"),
        (lambda n: torch.full((n,), 2), "every calibration label is the same class"),
        (lambda n: torch.randint(-1, 3, (n,)), r"labels range over \[-1, "),
        (lambda n: torch.randint(0, 6, (n,)), r"the model outputs 4 classes; labels must lie in \[0, 4\)"),
    ],
)
def test_infoq_labels_must_be_integer_classes_of_the_model(labels, message):
    from infoq_hf import search

    torch.manual_seed(0)
    with pytest.raises(ValueError, match=message):
        search(_classifier(), _labelled(labels=labels), bits=[2, 4], progress=False)


def test_bit_widths_are_never_rounded():
    from infoq_hf import search
    from infoq_hf.policy import BitPolicy

    with pytest.raises(ValueError, match="bit-width 2.5 must be an integer, got a float"):
        search(_classifier(), None, bits=(2.5, 4), method="weight_mse")
    for entry in ({"w_bits": 4.7}, {"w_bits": "4"}, {"w_bits": 4, "a_bits": 8.0}):
        with pytest.raises(ValueError, match="must be an integer"):
            BitPolicy({"0": entry})
    np = pytest.importorskip("numpy")
    assert (
        BitPolicy({"0": {"w_bits": np.int64(4)}})["0"].w_bits == 4
        and type(BitPolicy({"0": {"w_bits": np.int64(4)}})["0"].w_bits) is int
    )


def test_hawq_refuses_non_finite_inputs_and_traces():
    from infoq_hf import search

    bad = [(torch.full((32, 16), float("nan")), torch.randint(0, 4, (32,)))]
    with pytest.raises(ValueError, match="'inputs' holds NaN/inf"):
        search(_classifier(), bad, bits=[2, 4], method="hawq", hutchinson_samples=1, progress=False)
    model = _classifier()
    with torch.no_grad():
        model[2].bias[0] = float("inf")  # finite inputs, an overflowing loss
    with pytest.raises(ValueError, match="Hessian trace .* is not finite"):
        search(model, _labelled(1), bits=[2, 4], method="hawq", hutchinson_samples=1, progress=False)


def test_raw_torch_errors_become_errors_that_name_the_fix():
    from infoq_hf import search

    wrong_width = [(torch.randn(32, 15), torch.randint(0, 4, (32,)))]
    with pytest.raises(ValueError, match=r"cannot run calibration batch 0 \(tensor shapes \{'inputs': \[32, 15\]"):
        search(_classifier(), wrong_width, bits=[2, 4], progress=False)
    with pytest.raises(ValueError, match="'inputs' is empty"):
        search(_classifier(), [(torch.randn(0, 16), torch.zeros(0, dtype=torch.long))], bits=[2, 4], progress=False)
    for method in ("hawq", "oracle"):
        with pytest.raises(ValueError, match="the model outputs 4 classes"):
            search(
                _classifier(),
                _labelled(1, labels=lambda n: torch.full((n,), 7)),
                bits=[2, 4],
                method=method,
                hutchinson_samples=1,
                progress=False,
            )
    llama = tiny_llama()
    ids = torch.randint(0, 200, (4, 12))
    with pytest.raises(ValueError, match=r"token ids range over \[\d+, \d+\], but the model's vocabulary has 128"):
        search(llama, [{"input_ids": ids}], bits=[2, 4], progress=False)
    with torch.device("meta"):
        on_meta = _classifier()
    with pytest.raises(ValueError, match="on the meta device"):
        search(on_meta, _labelled(1), bits=[2, 4], progress=False)


# ----------------------------------------------------------------------------- infeasible budgets
def test_an_infeasible_budget_is_refused_before_any_probing(monkeypatch):
    from infoq_hf import quantize_with_infoq
    from infoq_hf.allocation import InfeasibleBudgetError

    search_module = sys.modules["infoq_hf.sensitivity.search"]  # the package re-exports `search` by that name

    def no_probing(*args, **kwargs):
        raise AssertionError("probed before the budget was checked")

    monkeypatch.setattr(search_module, "_probe_all", no_probing)
    config = InfoQConfig(bits=[4, 8], budget={"avg_bits": 3}, calibration=_labelled(2))
    with pytest.raises(
        InfeasibleBudgetError, match=r"average bits 3 is infeasible: the smallest achievable average .* is 4 bits"
    ):
        quantize_with_infoq(_classifier(), config, progress=False)
    with pytest.raises(InfeasibleBudgetError, match="size budget"):
        quantize_with_infoq(
            _classifier(),
            InfoQConfig(bits=[2, 4], budget={"size_bytes": 100}, calibration=_labelled(2)),
            progress=False,
        )
    with pytest.raises(AssertionError, match="probed"):  # a feasible budget goes on to the search
        quantize_with_infoq(
            _classifier(), InfoQConfig(bits=[2, 4], budget={"avg_bits": 3}, calibration=_labelled(2)), progress=False
        )
