"""GPTQ-aware allocation: the error ratios are the closed form on the float model's own Hessians, the
costs are rescaled exactly, the refinement judges GPTQ's weights, and the pipeline wires them."""

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from infoq_hf import Budget, InfoQConfig, allocate, quantizable_layers, quantize_model, refine
from infoq_hf.pipeline import format_summary, quantize_with_infoq
from infoq_hf.quant.gptq import HessianAccumulator, gptq_candidates, gptq_quantize, gptq_quantize_model
from infoq_hf.quant.quantizer import WeightScheme, fake_quantize_weight
from infoq_hf.quant.scheme import PackingScheme
from infoq_hf.sensitivity import SensitivityTable, search
from infoq_hf.sensitivity.rounding_costs import with_gptq_costs
from tests.helpers.kl import true_kl
from tests.helpers.models import lm_batches, tiny_gpt2, tiny_llama

SCHEME = PackingScheme(group_size=32)
BITS = (2, 3, 4, 8)


@pytest.fixture(scope="module")
def setup():
    model = tiny_llama(vocab=96, layers=2, pad_token_id=None, max_position_embeddings=64)
    batches = lm_batches()
    names = [n for n in quantizable_layers(model) if n != "lm_head"]
    candidates = gptq_candidates(model, {n: BITS for n in names}, batches, scheme=SCHEME, progress=False)
    table = search(
        model, batches, bits=BITS, scheme=SCHEME, skip_modules=["lm_head"], scores="calibrated", progress=False
    )
    return model, batches, names, candidates, table


def float_hessians(model, names, batches):
    accs = {n: HessianAccumulator(n, model.get_submodule(n)) for n in names}
    hooks = [accs[n].layer.register_forward_pre_hook(accs[n]) for n in names]
    with torch.no_grad():
        for b in batches:
            model(**b)
    for h in hooks:
        h.remove()
    return {n: a.hessian()[0] for n, a in accs.items()}


def test_ratios_and_weights_are_gptq_on_the_float_models_hessians(setup):
    model, batches, names, candidates, _ = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hessians = float_hessians(model, names, batches)
    for n in names:
        w, h = model.get_submodule(n).weight.detach(), hessians[n]
        for b in BITS:
            q = gptq_quantize(w, h, WeightScheme(b, 32), where=n).dequantize()
            rtn = fake_quantize_weight(w, WeightScheme(b, 32))
            err = lambda d, h=h: float(((d.double() @ h.double()) * d.double()).sum())  # noqa: E731
            # (the library's products are float32: about 1e-6 relative from this float64 reference)
            assert candidates.error_ratio[n][b] == pytest.approx(err(q - w) / err(rtn - w), rel=1e-5), (n, b)
            assert torch.equal(candidates.weight(n, b), q), (n, b)
    assert all(candidates.error_ratio[n][b] < 1 for n in names for b in (2, 3))  # GPTQ compensates
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is not changed
    with pytest.raises(KeyError, match="at 5 bits"):
        candidates.weight(names[0], 5)


def test_gptq_clips_the_group_scales_up_to_four_bits_only(setup):
    model, batches, names, _, _ = setup
    n = names[0]
    w, h = model.get_submodule(n).weight.detach(), float_hessians(model, [n], batches)[n]

    def codes(bits, clip):
        return gptq_quantize(w, h, WeightScheme(bits, 32, clip_search=clip), where=n).codes

    assert not torch.equal(codes(2, False), codes(2, True))
    assert all(torch.equal(codes(b, False), codes(b, True)) for b in (5, 8))


def test_candidates_on_a_rounded_prefix_are_what_sequential_packing_rounds(setup):
    """At the prefix configuration itself, the candidates are the sequential packing's weights exactly
    (both rounds each block on the inputs of the blocks before as rounded); block 0 sees float inputs."""
    model, batches, names, on_float, _ = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prefix = {n: (3, 2, 4)[i % 3] for i, n in enumerate(names)}  # a mixed configuration
    candidates = gptq_candidates(
        model, {n: BITS for n in names}, batches, scheme=SCHEME, prefix_bits=prefix, progress=False
    )
    packed = copy.deepcopy(model)
    gptq_quantize_model(packed, {n: b for n, b in prefix.items()}, batches, scheme=SCHEME, progress=False)
    for n in names:
        assert torch.equal(candidates.weight(n, prefix[n]), packed.get_submodule(n).dequantized_weight()), n
    first = [n for n in names if n.startswith("model.layers.0.")]
    later = [n for n in names if n.startswith("model.layers.1.")]
    assert first and later
    assert all(torch.equal(candidates.weight(n, b), on_float.weight(n, b)) for n in first for b in BITS)
    assert not all(torch.equal(candidates.weight(n, 2), on_float.weight(n, 2)) for n in later)
    assert candidates.meta["inputs"] == "prefix at 2 bits x5, 3 bits x5, 4 bits x4"
    assert on_float.meta["inputs"] == "float"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is put back
    with pytest.raises(ValueError, match="prefix_bits"):
        gptq_candidates(
            model, {n: BITS for n in names}, batches, scheme=SCHEME, prefix_bits={names[0]: 5}, progress=False
        )


def test_in_bfloat16_the_prefix_candidates_are_sequential_gptqs_codes_too():
    """A bfloat16 model: packed layers compute differently from their dequantized weight cast to bf16, so
    the candidates' later blocks must run the packed layers sequential GPTQ runs (not the cast weight)
    to round on the same inputs; the model's own layers are put back afterwards."""
    model = tiny_llama(vocab=96, layers=3, pad_token_id=None, max_position_embeddings=64).to(torch.bfloat16)
    batches = lm_batches()
    names = [n for n in quantizable_layers(model) if n != "lm_head"]
    layers_before = dict(model.named_modules())
    prefix = {n: (3, 2, 4)[i % 3] for i, n in enumerate(names)}
    candidates = gptq_candidates(
        model, {n: BITS for n in names}, batches, scheme=SCHEME, prefix_bits=prefix, progress=False
    )
    assert all(model.get_submodule(n) is layers_before[n] for n in names)
    packed = copy.deepcopy(model)
    gptq_quantize_model(packed, prefix, batches, scheme=SCHEME, progress=False)
    for n in names:
        assert torch.equal(candidates.quantized(n, prefix[n]).codes, packed.get_submodule(n).codes()), n


def test_quantize_model_packs_any_configuration_from_the_candidates(setup):
    """`candidates=` stores each layer's GPTQ codes at the policy's width as they are (no GPTQ pass); at
    the prefix configuration that is sequential GPTQ's packing bit for bit."""
    model, batches, names, _, _ = setup
    prefix = {n: 3 for n in names}
    candidates = gptq_candidates(
        model, {n: BITS for n in names}, batches, scheme=SCHEME, prefix_bits=prefix, progress=False
    )
    mixed = {n: BITS[i % 4] for i, n in enumerate(names)}
    packed = quantize_model(
        copy.deepcopy(model), mixed, scheme=PackingScheme(group_size=32, rounding="gptq"), candidates=candidates
    )
    for n in names:
        layer = packed.get_submodule(n)
        assert layer.w_bits == mixed[n] and torch.equal(layer.codes(), candidates.quantized(n, mixed[n]).codes), n
    config = InfoQConfig(policy=mixed, rounding="gptq", group_size=32, calibration=batches, clip_search=False)
    given = quantize_with_infoq(copy.deepcopy(model), config, candidates=candidates, progress=False)
    assert all(torch.equal(given.model.get_submodule(n).codes(), packed.get_submodule(n).codes()) for n in names)
    assert "packing (gptq candidates)" in given.summary["times_s"]
    sequential = quantize_model(copy.deepcopy(model), prefix, rounding="gptq", group_size=32, calibration=batches)
    uniform = quantize_model(copy.deepcopy(model), prefix, rounding="gptq", group_size=32, candidates=candidates)
    for n in names:
        assert torch.equal(uniform.get_submodule(n).weight_packed, sequential.get_submodule(n).weight_packed), n
    with pytest.raises(ValueError, match="keep_weights=True"):
        ratios_only = gptq_candidates(
            model, {n: BITS for n in names}, batches, scheme=SCHEME, keep_weights=False, progress=False
        )
        quantize_model(copy.deepcopy(model), prefix, rounding="gptq", group_size=32, candidates=ratios_only)
    with pytest.raises(ValueError, match="rounding='gptq'"):
        quantize_model(copy.deepcopy(model), prefix, rounding="rtn", group_size=32, candidates=candidates)
    with pytest.raises(KeyError, match="at 5 bits"):
        quantize_model(copy.deepcopy(model), {names[0]: 5}, rounding="gptq", group_size=32, candidates=candidates)


def test_costs_are_rescaled_exactly_and_converting_twice_changes_nothing(setup, tmp_path):
    model, batches, names, candidates, table = setup
    gptq = with_gptq_costs(table, candidates)
    for n in names:
        info, ratio = gptq.layers[n], candidates.error_ratio[n]
        assert info["t2_rtn"] == table.layers[n]["t2"]
        raw = {b: table.layers[n]["t2"][b] * ratio[b] for b in BITS}
        expected = {b: max(raw[c] for c in BITS if c >= b) for b in BITS}  # made non-increasing in bits
        assert info["t2"] == pytest.approx(expected, rel=1e-12)
        assert info["w"] == pytest.approx({b: table.layers[n]["alpha"] * expected[b] for b in BITS}, rel=1e-12)
    assert gptq.meta["costs_rounding"] == "gptq" and "costs_rounding" not in table.meta
    again = with_gptq_costs(gptq, candidates)
    assert again.layers == gptq.layers
    reloaded = SensitivityTable.load(gptq.save(tmp_path / "t.json"))  # bit-keyed entries come back as ints
    assert reloaded.layers == gptq.layers

    mse = search(model, None, bits=BITS, method="weight_mse", scheme=SCHEME, skip_modules=["lm_head"], progress=False)
    mse_gptq = with_gptq_costs(mse, candidates)
    n = names[0]
    assert mse_gptq.layers[n]["w"][2] == pytest.approx(mse.layers[n]["w"][2] * candidates.error_ratio[n][2])

    random = search(model, None, bits=BITS, method="random", scheme=SCHEME, skip_modules=["lm_head"], progress=False)
    kept = with_gptq_costs(random, candidates)
    assert kept.layers == random.layers and kept.meta["costs_rounding"] == "rtn"  # not error-scaled: as measured


def test_the_refinement_judges_gptqs_weights(setup):
    model, batches, names, candidates, table = setup
    table = with_gptq_costs(table, candidates)
    policy = refine(allocate(table, Budget(avg_bits=3.0)), model, batches, passes=6, gptq=candidates, progress=False)
    r = policy.report.refinement
    assert r.rounding == "gptq" and r.kl_final <= r.kl_ilp
    judged = copy.deepcopy(model)  # the float model with GPTQ's candidate weights of the chosen widths
    for n in names:
        judged.get_submodule(n).weight.data.copy_(candidates.weight(n, policy[n].w_bits))
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            ref, q = (F.log_softmax(m(**b).logits.float(), -1) for m in (model, judged))
            total, count = total + float((ref.exp() * (ref - q)).sum()), count + ref.shape[0] * ref.shape[1]
    assert total / count == pytest.approx(r.kl_final, rel=1e-4)
    rtn_only = gptq_candidates(
        model, {n: BITS for n in names}, batches, scheme=SCHEME, keep_weights=False, progress=False
    )
    with pytest.raises(ValueError, match="keep_weights=True"):
        refine(allocate(table, Budget(avg_bits=3.0)), model, batches, passes=2, gptq=rtn_only)


def test_the_pipeline_allocates_with_gptq_costs_when_it_packs_with_gptq(setup):
    model, batches, names, _, _ = setup
    kw = dict(
        bits=list(BITS),
        budget={"avg_bits": 3.0},
        group_size=32,
        calibration=batches,
        refine_passes=3,
        modules_to_not_convert=["lm_head"],
        method_options={"scores": "calibrated"},  # the form GPTQ's error ratio rescales
        clip_search=False,  # both roundings perturb with the same quantizer
    )
    gptq = quantize_with_infoq(copy.deepcopy(model), InfoQConfig(rounding="gptq", **kw), progress=False)
    rtn = quantize_with_infoq(copy.deepcopy(model), InfoQConfig(rounding="rtn", **kw), progress=False)
    assert gptq.table.meta["costs_rounding"] == "gptq" and "costs_rounding" not in rtn.table.meta
    assert gptq.policy.report.refinement.rounding == "gptq" and rtn.policy.report.refinement.rounding == "rtn"
    assert "gptq candidates" in gptq.summary["times_s"] and gptq.summary["rounding"] == "gptq"
    # the same probes: only the quantizer's error differs between the two tables
    assert all(gptq.table.layers[n]["alpha"] == rtn.table.layers[n]["alpha"] for n in names)
    # one candidate pass, on the inputs of the budget's uniform start: the ILP's costs, the weights the
    # refinement judges (its meta says so) and the packed codes, with no second GPTQ pass
    prefixed = gptq_candidates(
        model, {n: BITS for n in names}, batches, scheme=SCHEME, prefix_bits={n: 3 for n in names}, progress=False
    )
    expected = quantize_model(
        copy.deepcopy(model), gptq.policy, rounding="gptq", candidates=prefixed, skip_modules=["lm_head"]
    )
    for n in names:
        assert torch.equal(gptq.model.get_submodule(n).weight_packed, expected.get_submodule(n).weight_packed), n
    assert "packing (gptq candidates)" in gptq.summary["times_s"]
    ilp_only = quantize_with_infoq(
        copy.deepcopy(model), InfoQConfig(rounding="gptq", **{**kw, "refine_passes": 0}), progress=False
    )
    for run in (ilp_only, gptq):
        assert run.table.meta["gptq_costs"]["inputs"] == f"prefix at 3 bits x{len(names)}"
        assert all(
            run.table.layers[n]["gptq_error_ratio"][b] == prefixed.error_ratio[n][b] for n in names for b in BITS
        )
    r = gptq.policy.report.refinement
    assert r.judge_inputs == f"prefix at 3 bits x{len(names)}"
    assert set(r.kl_starts) <= {"ilp", "uniform-3"}
    # without moves (refine_passes=0) the ILP's policy is only compared with uniform on the whole model
    compared = ilp_only.policy.report.refinement
    assert (compared.passes, compared.accepted, compared.kept) == (2, 0, compared.start)
    kept = (
        {n: lb.w_bits for n, lb in allocate(gptq.table, Budget(avg_bits=3.0)).items()}
        if compared.kept == "ilp"
        else {n: 3 for n in names}
    )
    assert {n: lb.w_bits for n, lb in ilp_only.policy.items()} == kept
    assert compared.kl_final == min(compared.kl_starts.values())
    assert gptq.summary["times_s"]["gptq candidates"] > 0
    line = next(x for x in format_summary(gptq.summary).splitlines() if "whole-model check" in x)
    assert line.endswith(f"kept {r.kept}") and all(f"{name} {kl:.4g}" in line for name, kl in r.kl_starts.items())
    assert f"{r.passes - len(r.kl_starts)} refinement moves from {r.start}" in line


def test_the_per_width_search_measures_the_weights_gptq_packs(setup):
    """InfoQ's per-width first-order scores of a GPTQ run perturb each layer by the candidates the run
    packs (rounded before the search, on the budget's uniform start): the table is the search with those
    candidates, its costs are kept as measured, and the packed codes are the candidates'."""
    model, batches, names, _, _ = setup
    options = {"scores": "per_width", "magnitude": True}
    config = InfoQConfig(
        bits=list(BITS),
        budget={"avg_bits": 3.0},
        group_size=32,
        calibration=batches,
        rounding="gptq",
        modules_to_not_convert=["lm_head"],
        method_options=options,
    )
    result = quantize_with_infoq(copy.deepcopy(model), config, progress=False)
    clipped = replace(SCHEME, clip_search=True)  # clip_search="auto": GPTQ's group scales are clipped
    prefixed = gptq_candidates(
        model, {n: BITS for n in names}, batches, scheme=clipped, prefix_bits={n: 3 for n in names}, progress=False
    )
    expected = search(
        model,
        batches,
        bits=BITS,
        scheme=clipped,
        skip_modules=["lm_head"],
        candidates=prefixed,
        progress=False,
        **options,
    )
    assert result.table.meta["costs_rounding"] == "gptq" and result.summary["clip_search"] is True
    assert list(result.summary["times_s"])[1:3] == ["gptq candidates", "search"]
    for n in names:
        assert "gptq_error_ratio" not in result.table.layers[n]
        assert result.table.layers[n]["w"] == pytest.approx(expected.layers[n]["w"], rel=1e-6), n
    packed = quantize_model(
        copy.deepcopy(model), result.policy, rounding="gptq", candidates=prefixed, skip_modules=["lm_head"]
    )
    for n in names:
        assert torch.equal(result.model.get_submodule(n).weight_packed, packed.get_submodule(n).weight_packed), n


def test_a_mix_is_packed_with_the_gptq_rounding_that_runs_closer_to_the_float_model(setup):
    """The candidates are rounded on uniform 3-bit's inputs; a kept mix is also rounded by sequential GPTQ
    on its own inputs, and the packed codes are those of the rounding whose model has the lower KL to
    the float model on the check's batches (each KL recomputed here from the packed models)."""
    model, batches, names, _, _ = setup
    kw = dict(bits=list(BITS), group_size=32, calibration=batches, rounding="gptq", modules_to_not_convert=["lm_head"])
    kw["clip_search"] = False  # as SCHEME below
    run = quantize_with_infoq(
        copy.deepcopy(model), InfoQConfig(budget={"avg_bits": 3.5}, reround=True, **kw), progress=False
    )
    r = run.policy.report.refinement
    widths = {n: run.policy[n].w_bits for n in names}
    assert len(set(widths.values())) > 1  # a mix
    prefixed = gptq_candidates(
        model, {n: BITS for n in names}, batches, scheme=SCHEME, prefix_bits={n: 3 for n in names}, progress=False
    )
    sequential = copy.deepcopy(model)
    gptq_quantize_model(sequential, widths, batches, scheme=SCHEME, progress=False)
    packed = {
        "start inputs": quantize_model(
            copy.deepcopy(model), run.policy, rounding="gptq", candidates=prefixed, skip_modules=["lm_head"]
        ),
        "own inputs": sequential,
    }

    assert r.kl_roundings == pytest.approx({k: true_kl(model, m, batches) for k, m in packed.items()}, rel=1e-4)
    assert r.rounding_kept == min(r.kl_roundings, key=r.kl_roundings.get)
    kept = packed[r.rounding_kept]
    for n in names:
        assert torch.equal(run.model.get_submodule(n).weight_packed, kept.get_submodule(n).weight_packed), n
    assert "second rounding" in run.summary["times_s"]
    assert f"packed from {r.rounding_kept}" in format_summary(run.summary)
    # by default (reround=False) the candidates' weights are packed, with no second pass
    plain = quantize_with_infoq(copy.deepcopy(model), InfoQConfig(budget={"avg_bits": 3.5}, **kw), progress=False)
    assert "second rounding" not in plain.summary["times_s"] and plain.policy.report.refinement.kl_roundings is None
    for n in names:
        want = packed["start inputs"].get_submodule(n).weight_packed
        assert torch.equal(plain.model.get_submodule(n).weight_packed, want), n
    # the uniform start kept: the candidates are its sequential codes already, no second pass
    uniform = quantize_with_infoq(
        copy.deepcopy(model), InfoQConfig(budget={"avg_bits": 2.0}, reround=True, **kw), progress=False
    )
    assert {lb.w_bits for lb in uniform.policy.values()} == {2}
    assert "second rounding" not in uniform.summary["times_s"]
    with pytest.raises(ValueError, match="reround must be True or False"):
        InfoQConfig(budget={"avg_bits": 3.0}, reround="yes")


def test_search_samples_limit_the_search_and_refinement_not_gptq(setup):
    model, batches, names, _, _ = setup
    config = InfoQConfig(
        bits=list(BITS),
        budget={"avg_bits": 3.0},
        group_size=32,
        calibration=batches,
        refine_passes=2,
        rounding="gptq",
        search_samples=4,
        modules_to_not_convert=["lm_head"],
    )
    result = quantize_with_infoq(copy.deepcopy(model), config, progress=False)
    assert result.table.meta["calibration"]["batches"] == 1  # the first batch holds the 4 samples
    assert result.policy.report.refinement.calibration_batches == 1
    assert result.policy.report.refinement.validation_batches == 1  # the next 4 samples: the held-out check
    assert result.table.meta["gptq_costs"]["calibration_batches"] == 2  # GPTQ: all of them
    prefixed = gptq_candidates(  # clip_search="auto": clipped, as the pipeline rounds with GPTQ
        model,
        {n: BITS for n in names},
        batches,
        scheme=replace(SCHEME, clip_search=True),
        prefix_bits={n: 3 for n in names},
        progress=False,
    )
    expected = quantize_model(
        copy.deepcopy(model), result.policy, rounding="gptq", candidates=prefixed, skip_modules=["lm_head"]
    )
    assert all(
        torch.equal(result.model.get_submodule(n).weight_packed, expected.get_submodule(n).weight_packed) for n in names
    )
    with pytest.raises(ValueError, match="search_samples must be a positive int or None"):
        InfoQConfig(budget={"avg_bits": 3.0}, search_samples=0)


def test_conv1d_candidates_are_returned_as_the_layer_stores_them():
    model = tiny_gpt2()
    batches = [{"input_ids": torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))}]
    names = [n for n in quantizable_layers(model) if n != "lm_head"]
    candidates = gptq_candidates(model, {n: (3,) for n in names}, batches, scheme=SCHEME, progress=False)
    hessians = float_hessians(model, names, batches)
    for n in names:
        stored = model.get_submodule(n).weight  # transformers' Conv1D: [in, out]
        q = gptq_quantize(stored.detach().t(), hessians[n], WeightScheme(3, 32), where=n).dequantize()
        assert torch.equal(candidates.weight(n, 3), q.t()), n


def test_candidates_from_an_earlier_pass_give_the_same_run_and_misfits_are_refused(setup):
    model, batches, names, _, _ = setup
    kw = dict(
        bits=list(BITS),
        group_size=32,
        calibration=batches,
        rounding="gptq",
        modules_to_not_convert=["lm_head"],
        clip_search=False,
    )
    computed = quantize_with_infoq(copy.deepcopy(model), InfoQConfig(budget={"avg_bits": 3.5}, **kw), progress=False)
    given = gptq_candidates(
        model, {n: BITS for n in names}, batches, scheme=SCHEME, prefix_bits={n: 3 for n in names}, progress=False
    )
    reused = quantize_with_infoq(
        copy.deepcopy(model), InfoQConfig(budget={"avg_bits": 3.5}, **kw), candidates=given, progress=False
    )
    assert "gptq candidates" in reused.summary["times_s"]
    assert reused.policy.to_dict() == computed.policy.to_dict()
    for n in names:
        a, b = (r.model.get_submodule(n).weight_packed for r in (computed, reused))
        assert torch.equal(a, b), n
    with pytest.raises(ValueError, match="other inputs than this budget's uniform start"):  # 4.0's start is 4-bit
        quantize_with_infoq(copy.deepcopy(model), InfoQConfig(budget={"avg_bits": 4.0}, **kw), candidates=given)
    with pytest.raises(ValueError, match="calibration batches"):
        quantize_with_infoq(
            copy.deepcopy(model),
            InfoQConfig(budget={"avg_bits": 3.5}, **{**kw, "calibration": batches[:1]}),
            candidates=given,
        )
    with pytest.raises(ValueError, match="rounded with .*'clip_search': False.*'clip_search': True"):
        auto = InfoQConfig(budget={"avg_bits": 3.5}, **{**kw, "clip_search": "auto"})
        quantize_with_infoq(copy.deepcopy(model), auto, candidates=given)  # auto clips: these were not clipped
    with pytest.raises(ValueError, match="packs with 'rtn' rounding"):
        quantize_with_infoq(
            copy.deepcopy(model), InfoQConfig(budget={"avg_bits": 3.5}, **{**kw, "rounding": "rtn"}), candidates=given
        )
