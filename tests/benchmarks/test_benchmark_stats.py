"""Tests of the benchmarks' statistics: per-window NLL and the paired bootstrap of perplexity ratios."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from benchmarks.common import paired_bootstrap, perplexity, ratio_interval, window_nll
from tests.helpers.models import tiny_llama


def test_window_nll_sums_each_windows_token_losses_and_perplexity_is_their_mean():
    model = tiny_llama()
    ids = torch.randint(0, 128, (6, 9), generator=torch.Generator().manual_seed(0))
    batches = [{"input_ids": x, "attention_mask": torch.ones_like(x)} for x in ids.split(4)]
    sums, per_window = window_nll(model, batches)
    assert per_window == 8 and sums.shape == (6,)
    with torch.no_grad():
        for w in range(6):  # one window at a time, token by token
            logp = torch.log_softmax(model(input_ids=ids[w : w + 1]).logits[0].double(), dim=-1)
            expected = -sum(float(logp[t, ids[w, t + 1]]) for t in range(8))
            assert float(sums[w]) == pytest.approx(expected, rel=1e-5)
    assert perplexity(model, batches) == pytest.approx(math.exp(float(sums.sum()) / 48), rel=1e-12)


def test_a_constant_gap_per_window_gives_the_same_ratio_in_every_resample():
    b = torch.tensor([10.0, 30.0, 20.0, 50.0], dtype=torch.float64)
    ratios = paired_bootstrap(b + 3.0, b, per_window=8, resamples=500)
    assert torch.allclose(ratios, torch.full_like(ratios, math.exp(3.0 / 8)), rtol=1e-12)


def test_the_bootstrap_draws_from_the_exact_resampling_distribution():
    a = torch.tensor([5.0, 1.0, 2.0], dtype=torch.float64)
    b = torch.tensor([1.0, 4.0, 2.0], dtype=torch.float64)
    diff = (a - b).tolist()
    exact = [math.exp(sum(diff[i] for i in pick) / (3 * 2)) for pick in itertools.product(range(3), repeat=3)]
    ratios = paired_bootstrap(a, b, per_window=2, resamples=40000)
    assert all(min(abs(r - e) for e in exact) < 1e-12 for r in ratios[:200].tolist())
    assert float(ratios.mean()) == pytest.approx(sum(exact) / len(exact), rel=0.01)
    assert float((ratios < 1).double().mean()) == pytest.approx(sum(e < 1 for e in exact) / len(exact), abs=0.01)


def test_models_scored_on_different_windows_are_refused():
    with pytest.raises(ValueError, match="different windows"):
        paired_bootstrap(torch.zeros(3), torch.zeros(4), per_window=2, resamples=10)


def test_the_interval_names_the_ratio_and_the_5th_and_95th_percentile_of_the_resamples():
    b = torch.tensor([10.0, 30.0, 20.0, 50.0], dtype=torch.float64)
    assert ratio_interval(b + 3.0, b, per_window=8, resamples=200) == "{0:.3f} [{0:.3f}, {0:.3f}]".format(
        math.exp(3.0 / 8)
    )
    a = b + torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    ratio, interval = ratio_interval(a, b, per_window=2, resamples=4000).split(" ", 1)
    lo, hi = (float(x) for x in interval.strip("[]").split(", "))
    assert float(ratio) == pytest.approx(math.exp(float((a - b).sum()) / 8), abs=5e-4)
    assert lo < float(ratio) < hi


def test_jitter_moves_each_quantizable_weight_by_float32_sized_relative_noise_and_repeats_by_seed():
    from benchmarks.common import jitter_weights

    model = tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    jitter_weights(model, 1, ["lm_head"])
    after = model.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.endswith("proj.weight") for k in moved)  # the Linear layers, nothing else
    for k in moved:
        relative = ((after[k] - before[k]) / before[k]).abs()
        assert float(relative.max()) < 8 * 2.0**-24  # a few float32 ulps, no more
    again = tiny_llama()
    jitter_weights(again, 1, ["lm_head"])
    assert all(torch.equal(after[k], again.state_dict()[k]) for k in after)
    other = tiny_llama()
    jitter_weights(other, 2, ["lm_head"])
    assert any(not torch.equal(after[k], other.state_dict()[k]) for k in moved)
