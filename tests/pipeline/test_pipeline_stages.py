"""The default pipeline is the list of stages a config selects, each `stage(run, config) -> run`; composed by
hand they give the pipeline's result; `allocate` is the ILP alone and its report carries what `refine` needs."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from infoq_hf import Budget, InfoQConfig, allocate, refine, search
from infoq_hf.pipeline import Run, quantize_with_infoq, stages
from tests.helpers.models import lm_batches, tiny_llama

SKIP = ["lm_head"]
KW = dict(bits=[2, 4, 8], group_size=32, modules_to_not_convert=SKIP)


@pytest.fixture(scope="module")
def setup():
    return tiny_llama(vocab=96, pad_token_id=None, max_position_embeddings=64), lm_batches()


def _record_stages(monkeypatch) -> list:
    ran = []
    for name in (
        "check_embeddings",
        "check_budget",
        "calibrate",
        "choose_rounding",
        "round_candidates",
        "score",
        "count_leftovers",
        "gptq_costs",
        "allocate",
        "refine",
        "given_policy",
        "uniform",
        "activation_ranges",
        "pack",
    ):
        monkeypatch.setattr(stages, name, _recorded(getattr(stages, name), name, ran))
    return ran


def _recorded(stage, name: str, ran: list):
    def wrapped(run, config):
        ran.append(name)
        return stage(run, config)

    return wrapped


@pytest.mark.parametrize(
    "settings, table, expected",
    [
        (
            {"budget": {"avg_bits": 3}, "refine_passes": 2, "rounding": "rtn", "calibration": "batches"},
            False,
            [
                "check_embeddings",
                "check_budget",
                "calibrate",
                "choose_rounding",
                "round_candidates",
                "score",
                "count_leftovers",
                "gptq_costs",
                "allocate",
                "refine",
                "activation_ranges",
                "pack",
            ],
        ),
        (
            {"budget": {"avg_bits": 3}, "method": "weight_mse"},
            True,  # a saved table, no calibration: the ILP only
            [
                "check_embeddings",
                "calibrate",
                "choose_rounding",
                "round_candidates",
                "count_leftovers",
                "gptq_costs",
                "allocate",
                "activation_ranges",
                "pack",
            ],
        ),
        (
            {"bits": 4},
            False,
            ["check_embeddings", "calibrate", "choose_rounding", "uniform", "activation_ranges", "pack"],
        ),
        (
            {"policy": {"model.layers.0.mlp.up_proj": 4}},
            False,
            ["check_embeddings", "calibrate", "choose_rounding", "given_policy", "activation_ranges", "pack"],
        ),
    ],
)
def test_each_config_runs_the_stages_it_selects(setup, monkeypatch, settings, table, expected):
    model, batches = setup
    settings = {**KW, **settings}
    if settings.get("calibration") == "batches":
        settings["calibration"] = batches
    saved = (
        search(model, None, bits=[2, 4, 8], method="weight_mse", group_size=32, skip_modules=SKIP, progress=False)
        if table
        else None
    )
    ran = _record_stages(monkeypatch)
    result = quantize_with_infoq(copy.deepcopy(model), InfoQConfig(**settings), table=saved, progress=False)
    assert ran == expected
    assert result.summary["quantized_layers"] == len(result.policy)


def test_the_stages_composed_by_hand_give_the_pipelines_result(setup):
    model, batches = setup
    config = InfoQConfig(**KW, budget={"avg_bits": 3}, calibration=batches, refine_passes=3, search_samples=4)
    expected = quantize_with_infoq(copy.deepcopy(model), config, progress=False)
    run = Run(copy.deepcopy(model), SKIP, progress=False)
    for stage in (
        stages.calibrate,
        stages.choose_rounding,
        stages.round_candidates,
        stages.score,
        stages.gptq_costs,
        stages.allocate,
        stages.refine,
        stages.pack,
    ):
        before = run
        run = stage(run, config)
        # each stage returns a new run (rtn: no GPTQ candidates, no GPTQ costs)
        assert run is not before or stage in (stages.round_candidates, stages.gptq_costs)
    assert run.policy == expected.policy and run.table.layers == expected.table.layers
    assert run.held_out is not None and len(run.search_batches) == 1  # 4 samples: the first batch; the next held out
    assert list(run.times) == ["calibration", "search", "allocation", "refinement", "packing"]
    for name, layer in run.model.named_modules():
        if hasattr(layer, "weight_packed"):
            assert torch.equal(layer.weight_packed, expected.model.get_submodule(name).weight_packed), name


def test_allocate_is_the_ilp_and_its_report_carries_what_refine_needs(setup):
    model, batches = setup
    table = search(model, batches, bits=[2, 4, 8], group_size=32, skip_modules=SKIP, progress=False)
    policy = allocate(table, Budget(avg_bits=3.0), pin={"model.layers.0.mlp.up_proj": 8})
    assert policy.report.refinement is None and policy.report.table is table
    assert policy.report.spec.pins_w == {"model.layers.0.mlp.up_proj": 8}
    data = policy.report.to_dict()
    assert "spec" not in data and "table" not in data and json.loads(json.dumps(data)) == data
    with pytest.raises(TypeError):
        allocate(table, Budget(avg_bits=3.0), model=model, calibration=batches)  # the refinement is `refine`
    refined = refine(policy, model, batches, passes=4, seed=1, progress=False)
    assert refined["model.layers.0.mlp.up_proj"].w_bits == 8  # the pin holds
    assert refined.report.refinement is not None and refined.report.avg_bits <= 3.0 + 1e-9
    assert refined.report.solver == policy.report.solver and refined.report.spec is policy.report.spec


def test_a_saved_table_is_allocated_over_the_configs_widths_only(setup):
    """A table scored at more widths than the config names gives the config's candidates, never the others
    (a table scored at {2,4,8} with bits=[2,4] must not put a layer at 8)."""
    model, _ = setup
    saved = search(model, None, bits=[2, 4, 8], method="weight_mse", group_size=32, skip_modules=SKIP, progress=False)
    budget = {"avg_bits": 6.0}  # above 4: only 8-bit layers can use it
    wide = quantize_with_infoq(copy.deepcopy(model), InfoQConfig(**KW, budget=budget), table=saved, progress=False)
    assert 8 in {lb.w_bits for lb in wide.policy.values()}
    config = InfoQConfig(**{**KW, "bits": [2, 4]}, budget=budget)
    narrow = quantize_with_infoq(copy.deepcopy(model), config, table=saved, progress=False)
    assert {lb.w_bits for lb in narrow.policy.values()} <= {2, 4}
    assert narrow.table.bits == [2, 4] and saved.bits == [2, 4, 8]  # the caller's table is not changed
    with pytest.raises(ValueError, match=r"scores widths \[2, 4, 8\], not \[3\]"):
        quantize_with_infoq(
            copy.deepcopy(model), InfoQConfig(**{**KW, "bits": [2, 3]}, budget=budget), table=saved, progress=False
        )


def test_a_size_budget_counts_the_leftovers_in_the_dtype_they_are_stored_in(setup):
    """A float32 transformers model stores its leftovers in bfloat16 by default: the allocation spends the
    budget on those bytes (the report's size is the stored size), not on float32 leftovers."""
    from infoq_hf import model_size_bytes

    model, batches = setup
    budget = 0.3 * model_size_bytes(model)
    results = {}
    for dtype in ("auto", "float32"):
        packed = copy.deepcopy(model)
        config = InfoQConfig(
            **{**KW, "bits": [2, 4, 8]},
            budget={"size_bytes": budget},
            calibration=batches,
            rounding="rtn",
            float_dtype=dtype,
        )
        result = quantize_with_infoq(packed, config, progress=False)
        stored = model_size_bytes(packed)
        assert stored <= budget and result.policy.report.size_bytes == stored
        results[dtype] = result.summary["avg_bits"]
    assert results["auto"] > results["float32"], results  # the bytes bfloat16 leftovers free are spent


@pytest.mark.parametrize("vocab, hint", [(96, False), (4096, True)])
def test_the_summary_says_how_much_stays_float_and_points_at_a_float_embedding_that_dominates(vocab, hint):
    from infoq_hf import format_summary, model_size_bytes
    from infoq_hf.quant.apply import packed_layers

    model = tiny_llama(vocab=vocab, pad_token_id=None, max_position_embeddings=64)
    result = quantize_with_infoq(model, InfoQConfig(bits=4, modules_to_not_convert=SKIP), progress=False)
    packed = sum(model_size_bytes(m) for m in packed_layers(model).values())
    assert result.summary["unpacked_bytes"] == model_size_bytes(model) - packed > 0
    text = format_summary(result.summary)
    assert f"{result.summary['unpacked_bytes'] / 2**20:.2f} MiB" in text
    assert ("quantize_embeddings=True" in text) == hint


class _ShiftedEmbedding(torch.nn.Embedding):
    """An embedding whose forward does more than a lookup times a constant."""

    def forward(self, ids):
        return super().forward(ids) + 1


def _llama_with_shifted_embedding(vocab=96):
    model = tiny_llama(vocab=vocab, pad_token_id=None, max_position_embeddings=64, tie_word_embeddings=False)
    shifted = _ShiftedEmbedding(vocab, 64)
    shifted.weight.data.copy_(model.model.embed_tokens.weight.data)
    model.model.embed_tokens = shifted
    return model


def test_an_embedding_that_is_more_than_a_lookup_is_refused_by_quantize_embeddings_and_not_suggested():
    """Packing such an embedding as a lookup would change the model: asked to quantize it, the pipeline
    refuses by name; by default the summary does not point at the option, even with the embedding most
    of the checkpoint."""
    from infoq_hf import format_summary

    config = InfoQConfig(bits=4, quantize_embeddings=True, modules_to_not_convert=SKIP)
    with pytest.raises(ValueError, match=r"model.embed_tokens \(_ShiftedEmbedding\).*Leave quantize_embed"):
        quantize_with_infoq(_llama_with_shifted_embedding(), config)
    model = _llama_with_shifted_embedding(vocab=4096)
    result = quantize_with_infoq(model, InfoQConfig(bits=4, modules_to_not_convert=SKIP), progress=False)
    assert result.summary["unpacked_bytes"] > result.summary["size_bytes"] / 2
    assert "quantize_embeddings" not in format_summary(result.summary)
    assert type(model.model.embed_tokens) is _ShiftedEmbedding


def test_other_embeddings_beside_plain_ones_are_named_and_stay_float():
    model = tiny_llama(vocab=96, pad_token_id=None, max_position_embeddings=64)

    model.extra = _ShiftedEmbedding(8, 64)
    config = InfoQConfig(bits=4, quantize_embeddings=True, modules_to_not_convert=SKIP)
    with pytest.warns(UserWarning, match=r"extra \(_ShiftedEmbedding\) stay float"):
        result = quantize_with_infoq(model, config, progress=False)
    assert "model.embed_tokens" in result.policy and "extra" not in result.policy
    assert type(model.extra) is _ShiftedEmbedding


def test_a_table_of_another_model_is_refused_by_name(setup):
    model, _ = setup
    other = tiny_llama(vocab=96, layers=4, pad_token_id=None, max_position_embeddings=64)
    table = search(other, None, bits=[2, 4, 8], method="weight_mse", skip_modules=SKIP, progress=False)
    config = InfoQConfig(**KW, budget={"avg_bits": 3}, rounding="rtn")
    with pytest.raises(ValueError, match=r"layers this model does not have \(\['model\.layers\.2\."):
        quantize_with_infoq(copy.deepcopy(model), config, table=table, progress=False)


CALIBRATED = {"scores": "calibrated"}


@pytest.mark.parametrize(
    "bits, budget, options, expected",
    [
        ([2, 3, 4, 8], 2.5, {}, "first_order"),  # per-width scores measure every width: no extrapolation
        ([2, 3, 4, 8], 3.0, CALIBRATED, "first_order"),  # the uniform start (3 bits) is the probe width
        ([2, 3, 4, 8], 2.5, CALIBRATED, "probe"),  # the start (2 bits) lies below it
        ([2, 4, 8], 3.0, CALIBRATED, "probe"),  # auto probes at 4 bits; the start is 2
        ([2, 3, 4, 8], 2.5, {**CALIBRATED, "change_estimate": "first_order"}, "first_order"),  # the user's choice
        ([2, 3, 4, 8], 3.0, {**CALIBRATED, "probe_bits": 4}, "probe"),
    ],
)
def test_the_pipeline_estimates_calibrated_changes_to_first_order_unless_the_budget_lies_below_the_probe(
    setup, bits, budget, options, expected
):
    model, batches = setup
    config = InfoQConfig(
        bits=bits, budget={"avg_bits": budget}, group_size=32, calibration=batches, method_options=options
    )
    result = quantize_with_infoq(copy.deepcopy(model), config, skip_modules=SKIP, progress=False)
    assert result.table.meta["options"]["change_estimate"] == expected


@pytest.mark.parametrize("judged, held_out", [(4, slice(2, 4)), (6, slice(3, 4))])
def test_a_larger_judge_screens_the_moves_on_the_search_samples(setup, judged, held_out):
    """`refine_judge_samples`: the moves are judged on the first `judged` samples after a screening on the
    search's, the held-out check takes the next as many (or what is left): `refine` called with exactly
    those batches gives the same policy."""
    model, _ = setup
    ids = torch.randint(0, 96, (8, 24), generator=torch.Generator().manual_seed(5))
    batches = [{"input_ids": ids[i : i + 2]} for i in range(0, 8, 2)]  # 4 batches of 2 samples
    config = InfoQConfig(
        **KW,
        budget={"avg_bits": 3},
        calibration=batches,
        search_samples=2,
        refine_passes=6,
        refine_chains=1,
        refine_judge_samples=judged,
    )
    run = Run(copy.deepcopy(model), SKIP, progress=False)
    for stage in (stages.calibrate, stages.choose_rounding, stages.score, stages.allocate):
        run = stage(run, config)
    assert run.search_batches == batches[:1] and run.judge_batches == batches[: judged // 2]
    assert run.held_out == batches[held_out]
    refined = stages.refine(run, config).policy
    r = refined.report.refinement
    assert r.calibration_batches == judged // 2 and r.screened > 0 and r.validation_batches == len(batches[held_out])
    expected = refine(
        run.policy,
        run.model,
        batches[: judged // 2],
        passes=6,
        screen=1,
        candidates=stages.SCREENED_MOVES,
        validation=batches[held_out],
        progress=False,
    )
    assert refined.to_dict() == expected.to_dict()


def test_the_judge_samples_are_checked():
    with pytest.raises(ValueError, match="at least search_samples"):
        InfoQConfig(**KW, budget={"avg_bits": 3}, search_samples=4, refine_passes=8, refine_judge_samples=2)
    with pytest.raises(ValueError, match="refine_judge_samples must be a positive int"):
        InfoQConfig(**KW, budget={"avg_bits": 3}, refine_judge_samples=0)
    for missing in ({"search_samples": 4}, {"refine_passes": 8}):  # no moves, or nothing to screen on
        with pytest.raises(ValueError, match="set refine_passes > 0 and search_samples"):
            InfoQConfig(**KW, budget={"avg_bits": 3}, refine_judge_samples=8, **missing)


@pytest.mark.parametrize(
    "rounding, clip_search, clipped",
    [("gptq", "auto", True), ("rtn", "auto", False), ("gptq", False, False), ("rtn", True, True)],
)
def test_the_clipping_search_is_on_with_gptq_unless_set(setup, rounding, clip_search, clipped):
    """clip_search="auto" (the default) clips GPTQ's group scales, not round to nearest's; the search
    perturbs with the scheme the packing uses, and the layout does not depend on it."""
    model, batches = setup
    config = InfoQConfig(budget={"avg_bits": 4}, calibration=batches, rounding=rounding, clip_search=clip_search, **KW)
    assert InfoQConfig(budget={"avg_bits": 4}).clip_search == "auto"
    run = stages.choose_rounding(stages.calibrate(Run(copy.deepcopy(model), SKIP, progress=False), config), config)
    assert run.scheme.clip_search is clipped and run.scheme.rounding == rounding
    assert stages.scoring_scheme(run, config).clip_search is clipped
    assert run.scheme.same_format(stages.scoring_scheme(run, InfoQConfig(budget={"avg_bits": 4}, **KW)))
