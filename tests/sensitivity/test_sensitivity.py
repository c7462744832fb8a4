"""The probing engine: exactness of the prefix cache, determinism, formats, and bad input."""

import math

import pytest
import torch

from infoq_hf.sensitivity import SensitivityTable, search
from infoq_hf.sensitivity.probe import find_blocks
from tests.helpers.models import labelled_batches, lm_batches, small_cnn, tiny_llama


def test_prefix_cache_gives_identical_scores_with_fewer_layer_evaluations():
    model, batches = small_cnn(), labelled_batches()
    cached = search(model, batches, bits=(2, 4, 8), change_estimate="probe", progress=False)
    full = search(model, batches, bits=(2, 4, 8), change_estimate="probe", progress=False, prefix_cache=False)
    assert cached.to_dict()["layers"] == full.to_dict()["layers"]
    assert cached.meta["cost"]["layer_evals"] < full.meta["cost"]["layer_evals"]


def test_prefix_cache_exact_on_a_decoder_stack():
    model, batches = tiny_llama(vocab=96, layers=3, pad_token_id=None, max_position_embeddings=64), lm_batches()
    kw = dict(bits=(2, 8), progress=False, skip_modules=["lm_head"], max_samples=128, change_estimate="probe")
    cached = search(model, batches, **kw)
    full = search(model, batches, prefix_cache=False, **kw)
    assert cached.to_dict()["layers"] == full.to_dict()["layers"]
    assert cached.meta["task"] == "causal_lm"
    saved = 1 - cached.meta["cost"]["layer_evals"] / full.meta["cost"]["layer_evals"]
    assert saved > 0.2, saved  # later decoder layers skip the blocks before them
    assert "model.layers.0" in find_blocks(model) and "model.layers.2" in find_blocks(model)


def test_same_seed_same_scores_and_reference_bits_score_zero():
    model, batches = small_cnn(), labelled_batches()
    a = search(model, batches, bits=(2, 3, 8), seed=3, scores="eq4", progress=False)
    b = search(model, batches, bits=(2, 3, 8), seed=3, scores="eq4", progress=False)
    c = search(model, batches, bits=(2, 3, 8), seed=4, scores="eq4", progress=False)
    assert a.to_dict()["layers"] == b.to_dict()["layers"]
    assert a.to_dict()["layers"] != c.to_dict()["layers"]
    for info in a.layers.values():
        assert info["w"][8] == 0.0 and all(math.isfinite(v) and v >= 0 for v in info["w"].values())


def test_calibrated_scores_are_alpha_times_relative_weight_error():
    """S(l, b) = alpha_l * t2(l, b): t2 from the real quantizer, alpha_l from the Eq. 4 probe at probe_bits."""
    from infoq_hf.quant.modules import fake_quantize_layer
    from infoq_hf.quant.quantizer import WeightScheme

    model, batches = small_cnn(), labelled_batches()
    bits = (2, 3, 4, 5, 6, 8)
    kw = dict(bits=bits, seed=3, probe_bits=3, scores="calibrated", progress=False)
    cal = search(model, batches, **kw)  # one first-order change per layer at 3 bits
    squared = search(model, batches, change_power=2, **kw)
    eq4 = search(model, batches, bits=(3, 8), seed=3, scores="eq4", inv_bits=False, progress=False)
    assert cal.meta["cost"]["forward_passes"] == len(batches)  # one pass with gradients per batch
    for name, info in cal.layers.items():
        w = model.get_submodule(name).weight.detach()
        for b in bits:
            exact = float(
                ((fake_quantize_layer(model.get_submodule(name), w, WeightScheme(b), name) - w) ** 2).sum()
                / (w**2).sum()
            )
            assert info["t2"][b] == pytest.approx(exact, rel=1e-6) or info["t2"][b] >= exact  # monotone envelope
        assert info["alpha"] == pytest.approx(eq4.w(name, 3) / info["t2"][3], rel=1e-9)
        assert squared.layers[name]["alpha"] == pytest.approx(eq4.w(name, 3) ** 2 / info["t2"][3], rel=1e-9)
        scores = [info["w"][b] for b in bits]
        assert all(x >= y for x, y in zip(scores, scores[1:])) and scores[0] > scores[-1] > 0
        assert info["w"][5] == pytest.approx(info["alpha"] * info["t2"][5], rel=1e-12)


@pytest.mark.parametrize("bits, probed", [((2, 3, 4, 8), 3), ((4, 5, 8), 4), ((2, 8), 3)])
def test_auto_probes_at_the_narrowest_candidate_of_three_bits_or_more(bits, probed):
    model, batches = small_cnn(), labelled_batches()
    auto = search(model, batches, bits=bits, seed=3, scores="calibrated", progress=False)
    explicit = search(model, batches, bits=bits, seed=3, scores="calibrated", probe_bits=probed, progress=False)
    assert auto.meta["options"]["probe_bits"] == [probed]  # the table records the width probed
    assert auto.to_dict()["layers"] == explicit.to_dict()["layers"]


def test_alpha_fit_over_several_widths_is_least_squares_through_zero():
    from infoq_hf.sensitivity.search import _fit_alpha

    change, t2 = {2: 2.0, 3: 1.1, 4: 0.4}, {2: 1.0, 3: 0.5, 4: 0.25}
    expected = (2.0 * 1.0 + 1.1 * 0.5 + 0.4 * 0.25) / (1.0 + 0.25 + 0.0625)
    assert _fit_alpha(change, t2, [2, 3, 4]) == pytest.approx(expected, rel=1e-12)
    assert _fit_alpha(change, t2, [3]) == pytest.approx(1.1 / 0.5, rel=1e-12)


def test_model_weights_are_restored_after_probing():
    model, batches = small_cnn(), labelled_batches()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    search(model, batches, bits=(2, 8), progress=False)
    search(model, batches, bits=(2, 8), method="oracle", progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_more_bits_less_sensitive_for_baselines():
    model, batches = small_cnn(), labelled_batches()
    for method in ("weight_mse", "random"):
        table = search(model, batches, bits=(2, 4, 8), method=method, progress=False)
        for info in table.layers.values():
            assert info["w"][2] > info["w"][4] >= info["w"][8]


def test_hawq_scores_and_traces_are_finite():
    model, batches = small_cnn(), labelled_batches(n_batches=1)
    table = search(model, batches, bits=(2, 8), method="hawq", hutchinson_samples=2, progress=False)
    assert set(table.meta["hessian_trace"]) == set(table.layers)
    assert all(math.isfinite(v) for info in table.layers.values() for v in info["w"].values())


def test_activation_scores_and_table_json_roundtrip(tmp_path):
    model, batches = small_cnn(), labelled_batches()
    table = search(model, batches, bits=(4, 8), score_activations=True, progress=False)
    assert table.has_activation_scores and all(info["a"][8] == 0.0 for info in table.layers.values())
    path = table.save(tmp_path / "scores.json")
    loaded = SensitivityTable.load(path)
    assert loaded.to_dict() == table.to_dict()
    assert loaded.layers["0"]["macs"] == 1 * 12 * 12 * 8 * 9  # first conv, one sample
    assert loaded.meta["calibration"]["sha256"] and loaded.meta["model"]["quantized_weights_sha256"]


def test_activation_scores_follow_the_weight_form():
    """Beside per-width weight scores an activation score is D(l, b) itself; beside the calibrated form
    (and with inv_bits=True) it is Eq. 4's D(l, b) / b, from the same probes."""
    model, batches = small_cnn(), labelled_batches()
    kw = dict(bits=(2, 4, 8), score_activations=True, progress=False)
    per_width = search(model, batches, **kw)
    eq4 = search(model, batches, inv_bits=True, **kw)
    calibrated = search(model, batches, scores="calibrated", **kw)
    for name, info in per_width.layers.items():
        for b in (2, 4):
            assert info["a"][b] > 0
            assert info["a"][b] == pytest.approx(b * eq4.layers[name]["a"][b], rel=1e-12)
            assert calibrated.layers[name]["a"][b] == pytest.approx(eq4.layers[name]["a"][b], rel=1e-12)
    with pytest.raises(ValueError, match="inv_bits must be"):
        search(model, batches, inv_bits="yes", **kw)


def test_bad_input_errors():
    model, batches = small_cnn(), labelled_batches()
    with pytest.raises(ValueError, match="calibration set is empty"):
        search(model, [], progress=False)
    with pytest.raises(ValueError, match="needs labels"):
        search(model, [x for x, _ in batches], progress=False)
    with pytest.raises(ValueError, match="needs at least 32"):
        search(model, [(batches[0][0][:8], batches[0][1][:8])], progress=False)
    with pytest.raises(ValueError, match="unknown method"):
        search(model, batches, method="magic")
    with pytest.raises(ValueError, match="unknown InfoQ options"):
        search(model, batches, num_direction=3)
    with pytest.raises(ValueError, match="not in the model"):
        search(model, batches, task_observers=["nope"], progress=False)
    bad = [(torch.full_like(x, float("nan")), y) for x, y in batches]
    with pytest.raises(ValueError, match="NaN/inf"):
        search(model, bad, progress=False)


def test_a_search_under_autocast_measures_information_in_float32():
    """Under a caller's bfloat16 autocast the model runs in bfloat16, each probe sees its perturbed weight
    (autocast caches weight casts) and the projections and MI estimates stay float32."""
    model, batches = tiny_llama(vocab=96, layers=3, pad_token_id=None, max_position_embeddings=64), lm_batches()
    kw = dict(bits=(2, 4, 8), progress=False, skip_modules=["lm_head"], max_samples=128, scores="calibrated")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = search(model, batches, **kw)
    exact = search(model, batches, **kw)
    assert all(math.isfinite(info["alpha"]) and info["alpha"] > 0 for info in amp.layers.values())
    assert all(math.isfinite(v) for info in amp.layers.values() for v in info["w"].values())
    relative = sorted(abs(amp.layers[n]["alpha"] / exact.layers[n]["alpha"] - 1) for n in exact.layers)
    assert relative[len(relative) // 2] < 0.1, relative  # bfloat16 forwards move the median alpha little
