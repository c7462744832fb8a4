"""The first-order information change (`change_estimate="first_order"`) against ground truth: central
finite differences of the same SMI estimate, and the probes' measurement for a small perturbation."""

import pytest
import torch

from infoq_hf.quant.apply import default_forward, quantizable_layers
from infoq_hf.quant.scheme import PackingScheme
from infoq_hf.sensitivity import search
from infoq_hf.sensitivity.infoq import InfoQOptions, InfoQScorer
from infoq_hf.sensitivity.probe import Prober
from tests.helpers.models import labelled_batches, lm_batches, small_cnn, tiny_llama


def _cnn():
    return small_cnn().double(), [(x.double(), y) for x, y in labelled_batches()], "classification", []


def _llama():
    model = tiny_llama(vocab=96, layers=3, pad_token_id=None, max_position_embeddings=64).double()
    return model, lm_batches(), "causal_lm", ["lm_head"]


# The step: small enough for the CNN's ReLU kinks, large enough for the LM's changes to clear the
# float32 rounding of the observers' projections (which also bounds the agreement at about 1%).
@pytest.mark.parametrize(("make", "eps"), [(_cnn, 1e-3), (_llama, 0.05)], ids=["cnn", "llama"])
def test_first_order_change_is_the_derivative_of_the_probed_smi(make, eps):
    """<dSMI_j/dW_l, dW_l> equals the central difference of SMI_j along dW_l (float64 model)."""
    model, batches, task, skip = make()
    layers = quantizable_layers(model, skip)
    scheme = PackingScheme(group_size=16)
    with Prober(model, layers, batches, default_forward, lambda n, b: scheme.weight_scheme(layers[n], b)) as prober:
        scorer = InfoQScorer(prober, task, InfoQOptions(num_directions=16, max_samples=128), seed=0)
        first = scorer.first_order_changes({n: [3] for n in layers})
        smi = {"task": scorer._smi_task, "input": scorer._smi_input}
        checked = 0
        for name, layer in layers.items():
            reference, delta = layer.weight.data.clone(), prober.weight_change(name, 3)
            values = {}
            for sign in (1, -1):
                layer.weight.data.copy_(reference + sign * eps * delta)
                observed = scorer._observe(name)
                values[sign] = {t: float(smi[t[0]](observed[t[1]])) for t in scorer.terms if t[1] in observed}
            layer.weight.data.copy_(reference)
            assert values[1], name  # every layer has an observer after it
            for term, plus in values[1].items():
                central = (plus - values[-1][term]) / (2 * eps)
                assert first[term][name][3] == pytest.approx(central, rel=1e-2, abs=1e-7), (name, term)
                checked += 1
            before = [t for t in scorer.terms if t[1] not in scorer.after[name]]
            assert all(first[t][name][3] == 0.0 for t in before)  # an observer before the layer cannot move
        assert checked >= len(layers)


def test_first_order_search_matches_the_probes_for_a_small_perturbation():
    """With 7-bit perturbations the first-order D is the probes' D up to the second-order remainder."""
    model, batches = small_cnn(), labelled_batches()
    kw = dict(bits=(2, 4, 8), probe_bits=7, num_directions=16, scores="calibrated", magnitude=False, progress=False)
    first = search(model, batches, **kw)
    probed = search(model, batches, change_estimate="probe", **kw)
    assert first.meta["options"]["change_estimate"] == "first_order"
    assert first.meta["cost"]["forward_passes"] == len(batches)  # one pass with gradients per batch
    assert probed.meta["cost"]["forward_passes"] == len(batches) * len(probed.layers)
    for name, info in first.layers.items():
        assert info["alpha"] == pytest.approx(probed.layers[name]["alpha"], rel=0.05), name


def test_first_order_needs_the_gaussian_estimator():
    model, batches = small_cnn(), labelled_batches()
    with pytest.raises(ValueError, match="change_estimate='probe'"):
        search(model, batches, bits=(2, 8), estimator="binning", progress=False)
    with pytest.raises(ValueError, match="change_estimate must be"):
        search(model, batches, bits=(2, 8), change_estimate="exact", progress=False)
    table = search(model, batches, bits=(2, 8), estimator="binning", change_estimate="probe", progress=False)
    assert all(info["w"][2] > 0 for info in table.layers.values())


def test_first_order_search_leaves_the_model_and_its_gradients_as_they_were():
    model, batches = small_cnn(), labelled_batches()
    first = next(iter(quantizable_layers(model).values()))
    first.weight.grad = torch.ones_like(first.weight)  # a caller's gradient, mid-training
    frozen = model[-1].weight
    frozen.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    search(model, batches, bits=(2, 8), progress=False)
    assert torch.equal(first.weight.grad, torch.ones_like(first.weight))
    assert not frozen.requires_grad and first.weight.requires_grad
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_first_order_search_in_bfloat16_ranks_layers_as_in_float32():
    """A bfloat16 model's gradients are widened to float32 before the dot products."""
    from scipy.stats import spearmanr

    model = tiny_llama(vocab=96, layers=4, hidden=128, intermediate=256, pad_token_id=None, max_position_embeddings=64)
    kw = dict(
        bits=(2, 3, 4, 8), group_size=32, skip_modules=["lm_head"], max_samples=192, scores="calibrated", progress=False
    )
    full = search(model, lm_batches(), **kw)
    half = search(model.to(torch.bfloat16), lm_batches(), **kw)
    alphas = [[t.layers[n]["alpha"] for n in full.layers] for t in (full, half)]
    assert all(a > 0 for a in alphas[1])
    assert spearmanr(*alphas).correlation > 0.9


def test_magnitude_adds_the_elements_changes_that_the_signed_form_lets_cancel():
    """One batch, perturbations at two single elements i and j: the signed form of e_i - e_j is the
    difference of the one-element changes, the magnitude form the sum of their absolute values."""
    model = small_cnn().double()
    batches = [(x.double(), y) for x, y in labelled_batches(n_batches=1, size=64)]
    layers = quantizable_layers(model)
    name, layer = next(iter(layers.items()))
    scheme = PackingScheme()
    with Prober(model, layers, batches, default_forward, lambda n, b: scheme.weight_scheme(layers[n], b)) as prober:
        scorer = InfoQScorer(prober, "classification", InfoQOptions(num_directions=16, max_samples=128), seed=0)
        one = [torch.zeros_like(layer.weight) for _ in range(2)]
        one[0].view(-1)[3], one[1].view(-1)[40] = 1e-3, 1e-3
        single = scorer.first_order_changes({name: [2, 3]}, perturbation=lambda n, b: one[b - 2])
        both = one[0] - one[1]
        signed = scorer.first_order_changes({name: [2]}, perturbation=lambda n, b: both)
        magnitude = scorer.first_order_changes({name: [2]}, perturbation=lambda n, b: both, magnitude=True)
    for term, changes in single.items():
        i, j = changes[name][2], changes[name][3]
        assert i != 0 and j != 0, term
        assert signed[term][name][2] == pytest.approx(i - j, rel=1e-9, abs=1e-15)
        assert magnitude[term][name][2] == pytest.approx(abs(i) + abs(j), rel=1e-9, abs=1e-15)


def _rounded_to_nearest(model, layers, bits, scheme):
    """GPTQ candidates whose weights are round to nearest's: a stand-in with known perturbations."""
    from infoq_hf.quant.gptq.candidates import GPTQCandidates
    from infoq_hf.quant.quantizer import quantize_weight

    weights = {
        (n, b): quantize_weight(m.weight.detach(), scheme.weight_scheme(m, b)) for n, m in layers.items() for b in bits
    }
    return GPTQCandidates({n: dict.fromkeys(bits, 1.0) for n in layers}, weights, set(), {"options": {}})


def test_per_width_scores_perturb_by_the_candidates_weights():
    """Candidates holding round to nearest's weights give the per-width table measured without them."""
    model, batches = tiny_llama(vocab=96, layers=3, pad_token_id=None, max_position_embeddings=64), lm_batches()
    scheme = PackingScheme(group_size=16)
    kw = dict(bits=(2, 3, 8), scheme=scheme, skip_modules=["lm_head"], scores="per_width", magnitude=True)
    plain = search(model, batches, progress=False, **kw)
    layers = quantizable_layers(model, ["lm_head"])
    measured = search(
        model, batches, candidates=_rounded_to_nearest(model, layers, (2, 3, 8), scheme), progress=False, **kw
    )
    assert measured.meta["costs_rounding"] == "gptq" and "costs_rounding" not in plain.meta
    for name, info in plain.layers.items():
        assert "alpha" not in info and info["w"][8] == 0.0 and info["w"][2] > info["w"][3] > 0, name
        assert measured.layers[name]["w"] == pytest.approx(info["w"], rel=1e-5), name


def test_candidates_apply_to_the_first_order_per_width_scores_only():
    model, batches = small_cnn(), labelled_batches()
    layers = quantizable_layers(model)
    candidates = _rounded_to_nearest(model, layers, (2, 8), PackingScheme())
    for options in ({"scores": "calibrated"}, {"change_estimate": "probe"}, {"method": "weight_mse"}):
        with pytest.raises(ValueError, match="candidates= perturbs layers by GPTQ's rounding"):
            search(model, batches, bits=(2, 8), candidates=candidates, progress=False, **options)


def test_the_default_observes_the_model_output_alone():
    model, batches = tiny_llama(vocab=96, layers=4, pad_token_id=None, max_position_embeddings=64), lm_batches()
    layers = quantizable_layers(model, ["lm_head"])
    scheme = PackingScheme(group_size=16)
    with Prober(model, layers, batches, default_forward, lambda n, b: scheme.weight_scheme(layers[n], b)) as prober:
        default = InfoQScorer(prober, "causal_lm", InfoQOptions(max_samples=128), seed=0)
        blocks = InfoQScorer(
            prober, "causal_lm", InfoQOptions(max_samples=128, task_observers="last", input_weight=1.0), seed=0
        )
    assert default.terms == [("task", "<output>")]
    assert ("task", "model.layers.3") in blocks.terms and any(kind == "input" for kind, _ in blocks.terms)
    with pytest.raises(ValueError, match="'output', 'last', 'middle', 'all', 'none'"):
        InfoQScorer(prober, "causal_lm", InfoQOptions(task_observers="first"), seed=0)
