"""Settings users carry over from GPTQConfig: `bits=4` packs every layer at 4 bits with no search and no
GPTQ candidate passes (rounding chosen as "auto" does); `dataset=` is `calibration=`; `tokenizer=` builds
the batches; `sym`, `desc_act`, `damp_percent` and `group_size=-1` mean what they mean there; any other
name is refused with the InfoQ spelling. `search(bits=4)` scores one width; `bits=None` is a clear error."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from infoq_hf import InfoQConfig, quantizable_layers, quantization_result, quantize_model, search
from infoq_hf.pipeline import GPTQ_MIN_TOKENS, quantize_with_infoq, stages
from tests.helpers.models import lm_batches, make_calibration_text, make_tiny_llama, tiny_llama

transformers = pytest.importorskip("transformers")
SKIP = ["lm_head"]


def _no_search_or_candidates(monkeypatch):
    """Make the probing search and GPTQ's candidate passes fail if the pipeline calls them."""

    def refuse(what):
        def call(*args, **kwargs):
            if what == "search" and kwargs.get("method") == "random":  # the layer list: sizes only, no probing
                return original_search(*args, **kwargs)
            raise AssertionError(f"uniform quantization ran {what}")

        return call

    original_search = stages.search
    monkeypatch.setattr(stages, "search", refuse("search"))
    monkeypatch.setattr(stages, "gptq_candidates", refuse("GPTQ's candidate passes"))


def _packed_equal(a, b, names):
    for n in names:
        la, lb = a.get_submodule(n), b.get_submodule(n)
        assert la.w_bits == lb.w_bits, n
        assert all(torch.equal(x, y) for x, y in zip(la.state_dict().values(), lb.state_dict().values())), n


def test_bits_int_packs_every_layer_at_that_width_without_search_or_candidates(monkeypatch):
    """Round to nearest (a data-free run): the packed model is quantize_model's with every layer at 4 bits."""
    model = tiny_llama(vocab=96, pad_token_id=None)
    names = [n for n in quantizable_layers(model) if n not in SKIP]
    _no_search_or_candidates(monkeypatch)
    result = quantize_with_infoq(copy.deepcopy(model), InfoQConfig(bits=4, modules_to_not_convert=SKIP), progress=False)
    assert result.table is None and result.policy.report is None
    assert {n: lb.w_bits for n, lb in result.policy.items()} == {n: 4 for n in names}
    assert result.summary["method"] == "uniform 4-bit (no search)" and result.summary["rounding"] == "rtn"
    assert set(result.summary["times_s"]) == {"packing"}  # no calibration, no search, no allocation
    expected = quantize_model(copy.deepcopy(model), {n: 4 for n in names}, group_size=128, skip_modules=SKIP)
    _packed_equal(result.model, expected, names)


def test_bits_int_rounds_with_gptq_when_auto_would_and_still_runs_no_candidates(monkeypatch):
    """ "auto" with enough calibration tokens on a causal LM: GPTQ rounding, as with a search, but one pass."""
    model = tiny_llama(vocab=96, pad_token_id=None, max_position_embeddings=128)
    batches = [
        {"input_ids": torch.randint(0, 96, (16, 128), generator=torch.Generator().manual_seed(i))} for i in range(2)
    ]
    assert sum(b["input_ids"].numel() for b in batches) >= GPTQ_MIN_TOKENS
    names = [n for n in quantizable_layers(model) if n not in SKIP]
    _no_search_or_candidates(monkeypatch)
    result = quantize_with_infoq(
        copy.deepcopy(model),
        InfoQConfig(bits=3, dataset=batches, group_size=32, modules_to_not_convert=SKIP),
        progress=False,
    )
    assert result.summary["rounding"] == "gptq" and list(result.summary["times_s"]) == ["calibration", "packing (gptq)"]
    assert result.summary["clip_search"] is True  # "auto": GPTQ's group scales are clipped
    expected = quantize_model(
        copy.deepcopy(model),
        {n: 3 for n in names},
        group_size=32,
        clip_search=True,
        skip_modules=SKIP,
        rounding="gptq",
        calibration=batches,
    )
    _packed_equal(result.model, expected, names)


def test_gptqconfig_style_settings_quantize_on_load_and_reload(tmp_path):
    """bits, dataset (texts), tokenizer (a folder), sym, desc_act, damp_percent, group_size=-1, as a GPTQConfig
    user writes them; config.json says what they mean in InfoQ, and the checkpoint reloads with the same logits."""
    folder = make_tiny_llama(tmp_path / "llama")
    texts = make_calibration_text(tmp_path / "calib.txt").read_text().splitlines()
    config = InfoQConfig(
        bits=4,
        dataset=texts,
        tokenizer=str(folder),
        sym=True,
        desc_act=True,
        damp_percent=0.1,
        group_size=-1,
        rounding="gptq",
        num_samples=8,
        seq_len=16,
    )
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, quantization_config=config)
    result = quantization_result(model)
    assert result.summary["rounding"] == "gptq" and set(lb.w_bits for lb in result.policy.values()) == {4}
    assert all(lb["group_size"] is None for lb in result.summary["layers"].values())  # one scale per output channel
    model.save_pretrained(tmp_path / "q")
    stored = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
    assert stored["bits"] == [4] and stored["symmetric"] is True and stored["group_size"] is None
    assert stored["clip_search"] is True  # "auto" made concrete: GPTQ's group scales are clipped
    assert stored["gptq_options"] == {"act_order": True, "damp": 0.1} and "tokenizer" not in stored
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "q")
    ids = torch.randint(3, 250, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reloaded(ids).logits)


def test_dataset_is_calibration_and_tokenizer_builds_the_batches(tmp_path):
    """A model with no tokenizer saved beside it calibrates on texts with `tokenizer=` (a folder or an object),
    and `dataset=` gives the same run as `calibration=`."""
    folder = make_tiny_llama(tmp_path / "llama")
    texts = make_calibration_text(tmp_path / "calib.txt").read_text().splitlines()
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    model.name_or_path = str(tmp_path / "nowhere")  # no tokenizer to find from the model
    kw = dict(
        bits=[2, 4, 8],
        budget={"avg_bits": 3},
        method="hawq",
        num_samples=4,
        seq_len=16,
        refine_passes=0,
        modules_to_not_convert=SKIP,
    )
    with pytest.raises(ValueError, match="no tokenizer given"):
        quantize_with_infoq(copy.deepcopy(model), InfoQConfig(dataset=texts, **kw), progress=False)
    by_name = quantize_with_infoq(
        copy.deepcopy(model), InfoQConfig(dataset=texts, tokenizer=str(folder), **kw), progress=False
    )
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    by_object = quantize_with_infoq(
        copy.deepcopy(model), InfoQConfig(calibration=texts, tokenizer=tokenizer, **kw), progress=False
    )
    assert by_name.policy == by_object.policy and by_name.table.layers == by_object.table.layers
    assert by_name.table.meta["calibration"]["batches"] >= 1
    assert InfoQConfig(dataset=texts, **kw).to_dict() == InfoQConfig(calibration=texts, **kw).to_dict()


def test_gptq_names_map_to_infoq_settings():
    config = InfoQConfig(bits=3, sym=True, desc_act=True, damp_percent=0.05, group_size=-1)
    assert config.symmetric is True and config.group_size is None
    assert config.gptq_options == {"act_order": True, "damp": 0.05}
    assert InfoQConfig(bits=3, desc_act=False, gptq_options={"block_size": 64}).gptq_options == {
        "block_size": 64,
        "act_order": False,
    }
    assert InfoQConfig(bits=3, sym=False).symmetric is False


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"sym": True, "symmetric": False}, "both symmetric= and sym="),
        (
            {"desc_act": True, "gptq_options": {"act_order": False}},
            r"gptq_options\['act_order'\] and its GPTQConfig name",
        ),
        ({"dataset": ["a"], "calibration": ["b"]}, "both calibration= and dataset="),
        ({"model_seqlen": 2048}, "'model_seqlen': in InfoQConfig seq_len="),
        ({"use_exllama": True}, "'use_exllama': in InfoQConfig none: InfoQ packs its own layout"),
        ({"zero_point": True}, "'zero_point': in InfoQConfig symmetric=False"),
        ({"load_in_4bit": True}, "'load_in_4bit': in InfoQConfig bits=4"),
        ({"groupsize": 64}, "'groupsize': not a setting; did you mean group_size"),
        ({"damp_percent": 20.0}, "GPTQ damp must be a number in"),
        ({"tokenizer": 3}, "InfoQConfig.tokenizer must be a tokenizer"),
        ({"budget": {"avg_bits": 4}}, r"packs every layer at 4 bits, with no search; .*bits=\[2, 3, 4, 8\]"),
        ({"group_size": -2}, "must be a positive int"),
    ],
)
def test_settings_it_cannot_map_are_refused_with_the_infoq_spelling(settings, message):
    with pytest.raises(ValueError, match=message):
        InfoQConfig(**{"bits": 4, **settings})


@pytest.mark.parametrize("bits", [None, "4", 9])
def test_bits_must_be_an_int_or_a_list(bits):
    with pytest.raises(ValueError, match="bit"):
        InfoQConfig(bits=bits)


def test_a_uniform_config_round_trips_and_a_stored_policy_wins():
    config = InfoQConfig(bits=4, group_size=32)
    again = InfoQConfig.from_dict(config.to_dict())
    assert again == config and again.uniform_bits == 4 and again.to_dict()["bits"] == [4]
    assert (
        InfoQConfig(bits=[4]).uniform_bits == 4 and InfoQConfig(bits=[4], budget={"avg_bits": 4}).uniform_bits is None
    )
    with_policy = InfoQConfig.from_dict({**config.to_dict(), "policy": {"a": 4}})
    assert with_policy.policy is not None and InfoQConfig(bits=[2, 4], budget={"avg_bits": 3}).uniform_bits is None


def test_search_takes_one_int_width_and_refuses_none():
    model, batches = tiny_llama(vocab=96, pad_token_id=None), lm_batches()
    one = search(model, None, bits=4, method="weight_mse", skip_modules=SKIP, progress=False)
    listed = search(model, None, bits=[4], method="weight_mse", skip_modules=SKIP, progress=False)
    assert one.bits == [4] and one.layers == listed.layers
    with pytest.raises(ValueError, match="bits must be the candidate bit-widths"):
        search(model, batches, bits=None, progress=False)
