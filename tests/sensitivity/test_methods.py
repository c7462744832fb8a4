"""The data-free allocation methods `size_only` and `llamacpp`: their scores, and the allocations they give."""

import itertools
import warnings

import pytest
import torch

from infoq_hf import Budget, InfoQConfig, allocate
from infoq_hf.pipeline import quantize_with_infoq
from infoq_hf.quant.modules import fake_quantize_layer
from infoq_hf.quant.quantizer import WeightScheme
from infoq_hf.sensitivity import DATA_FREE_METHODS, METHODS, SensitivityTable, search
from infoq_hf.sensitivity.llamacpp import GGML_BITS, preset_type, use_more_bits
from infoq_hf.sensitivity.rounding_costs import error_scaled
from tests.helpers.models import lm_batches, small_cnn, tiny_llama

BITS = (2, 3, 4, 8)


def test_new_methods_are_registered_and_data_free():
    for method in ("size_only", "llamacpp"):
        assert method in METHODS and method in DATA_FREE_METHODS


def test_size_only_is_the_layer_share_times_its_relative_weight_error():
    model = tiny_llama(layers=2)
    table = search(model, None, bits=BITS, method="size_only", group_size=16, progress=False)
    total = sum(model.get_submodule(n).weight.numel() for n in table.layers)
    for name, info in table.layers.items():
        layer = model.get_submodule(name)
        w = layer.weight.detach()
        assert info["alpha"] == pytest.approx(w.numel() / total, rel=1e-12)
        for b in BITS:
            err = float(
                ((fake_quantize_layer(layer, w, WeightScheme(b, group_size=16), name) - w) ** 2).sum() / (w**2).sum()
            )
            assert info["t2"][b] == pytest.approx(err, rel=1e-6) or info["t2"][b] >= err  # non-increasing envelope
            assert info["w"][b] == pytest.approx(info["alpha"] * info["t2"][b], rel=1e-12)
        assert all(info["w"][a] >= info["w"][b] for a, b in zip(BITS, BITS[1:]))
    assert error_scaled(table)  # GPTQ packing rescales it like every alpha * t2 cost


def test_use_more_bits_picks_the_first_and_last_eighth_and_every_third_block():
    # llama.cpp's rule written out by hand for 8 and 32 blocks
    assert [i for i in range(8) if use_more_bits(i, 8)] == [0, 3, 6, 7]
    expected = [0, 1, 2, 3] + list(range(6, 28, 3)) + [28, 29, 30, 31]
    assert [i for i in range(32) if use_more_bits(i, 32)] == expected


def test_preset_types_follow_llama_cpp_q4_k_m_and_q3_k_m():
    assert preset_type("q4_k_m", "attn_v", (3, 8)) == "Q6_K" and preset_type("q4_k_m", "attn_v", (4, 8)) == "Q4_K"
    assert preset_type("q4_k_m", "ffn_down", (7, 8)) == "Q6_K" and preset_type("q4_k_m", None, (0, 8)) == "Q4_K"
    assert preset_type("q4_k_m", "output", None) == "Q6_K"
    assert preset_type("q3_k_m", "attn_v", (1, 32)) == "Q5_K" and preset_type("q3_k_m", "attn_v", (2, 32)) == "Q4_K"
    assert preset_type("q3_k_m", "ffn_down", (1, 32)) == "Q5_K" and preset_type("q3_k_m", "ffn_down", (2, 32)) == "Q4_K"
    assert preset_type("q3_k_m", "attn_output", (5, 32)) == "Q4_K" and preset_type("q3_k_m", None, (5, 32)) == "Q3_K"


def favoured(name: str, blocks: int) -> bool:
    i = int(name.split(".")[2])
    return name.endswith(("v_proj", "down_proj")) and use_more_bits(i, blocks)


def test_llamacpp_allocation_at_q4_k_m_shape_gives_the_favoured_tensors_the_higher_width():
    blocks = 8
    model = tiny_llama(layers=blocks, hidden=64, intermediate=128)
    table = search(model, None, bits=BITS, method="llamacpp", group_size=16, skip_modules=["lm_head"], progress=False)
    shape = {n: 8 if favoured(n, blocks) else 4 for n in table.layers}  # Q6_K -> 8, Q4_K -> 4 of {2, 3, 4, 8}
    assert {n for n, info in table.layers.items() if info["llamacpp_type"] == "Q6_K"} == {
        n for n, b in shape.items() if b == 8
    }
    params = {n: info["params"] for n, info in table.layers.items()}
    budget = sum(params[n] * b for n, b in shape.items()) / sum(params.values())
    policy = allocate(table, Budget(avg_bits=budget), pin_first_last=False)
    assert {n: lb.w_bits for n, lb in policy.items()} == shape
    size_only = search(
        model, None, bits=BITS, method="size_only", group_size=16, skip_modules=["lm_head"], progress=False
    )
    plain = allocate(size_only, Budget(avg_bits=budget), pin_first_last=False)
    assert {n: lb.w_bits for n, lb in plain.items()} != shape  # the preference comes from the preset, not sizes


def brute_force(table: SensitivityTable, budget: float) -> tuple[float, dict]:
    names = list(table.layers)
    params = [table.layers[n]["params"] for n in names]
    best = (float("inf"), None)
    for widths in itertools.product(table.bits, repeat=len(names)):
        if sum(p * b for p, b in zip(params, widths)) > budget * sum(params) + 1e-9:
            continue
        cost = sum(table.w(n, b) for n, b in zip(names, widths))
        if cost < best[0]:
            best = (cost, dict(zip(names, widths)))
    return best


def test_llamacpp_preference_holds_at_every_budget_by_brute_force():
    """On six layers (two favoured v_proj / down_proj against unfavoured ones of the same shape), the ILP
    finds the brute-force optimum at every budget, and a favoured tensor never gets fewer bits than an
    unfavoured one of its shape."""
    blocks = 8
    model = tiny_llama(layers=blocks)
    full = search(model, None, bits=BITS, method="llamacpp", group_size=16, skip_modules=["lm_head"], progress=False)
    pick = [f"model.layers.{i}.{kind}" for kind in ("self_attn.v_proj", "mlp.down_proj") for i in (0, 1, 3)]
    table = SensitivityTable("llamacpp", BITS, {n: full.layers[n] for n in pick}, full.meta)
    for budget in [2.0 + 0.25 * k for k in range(25)]:
        best, widths = brute_force(table, budget)
        policy = allocate(table, Budget(avg_bits=budget), pin_first_last=False)
        assert policy.report.objective == pytest.approx(best, rel=1e-9, abs=1e-15), budget
        for a, b in itertools.permutations(pick, 2):
            if favoured(a, blocks) and not favoured(b, blocks) and a.rsplit(".", 1)[1] == b.rsplit(".", 1)[1]:
                assert widths[a] >= widths[b], (budget, widths)
                assert policy[a].w_bits >= policy[b].w_bits, (budget, {n: lb.w_bits for n, lb in policy.items()})


def test_llamacpp_q3_k_m_preset_and_bad_options():
    model = tiny_llama(layers=8)
    table = search(model, None, bits=BITS, method="llamacpp", preset="q3_k_m", progress=False)
    types = {n: info["llamacpp_type"] for n, info in table.layers.items()}
    assert types["model.layers.0.self_attn.v_proj"] == "Q5_K" and types["model.layers.5.self_attn.v_proj"] == "Q4_K"
    assert types["model.layers.5.self_attn.q_proj"] == "Q3_K" and types["lm_head"] == "Q6_K"
    assert table.meta["options"] == {"preset": "q3_k_m"}
    v0, q0 = table.layers["model.layers.0.self_attn.v_proj"], table.layers["model.layers.0.self_attn.q_proj"]
    size_ratio = v0["params"] / q0["params"]
    assert v0["alpha"] / q0["alpha"] == pytest.approx(size_ratio * 4 ** (GGML_BITS["Q5_K"] - GGML_BITS["Q3_K"]))
    with pytest.raises(ValueError, match="preset"):
        search(model, None, bits=BITS, method="llamacpp", preset="q5_k_s", progress=False)
    with pytest.raises(ValueError, match="do not apply"):
        search(model, None, bits=BITS, method="size_only", preset="q4_k_m", progress=False)


def test_llamacpp_on_a_model_without_its_roles_warns_and_equals_size_only():
    model = small_cnn()
    with pytest.warns(UserWarning, match="size_only"):
        table = search(model, None, bits=BITS, method="llamacpp", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = search(model, None, bits=BITS, method="size_only", progress=False)
    assert {n: i["w"] for n, i in table.layers.items()} == {n: i["w"] for n, i in plain.layers.items()}


@pytest.mark.parametrize("method", ["size_only", "llamacpp"])
def test_new_methods_run_through_the_whole_pipeline_with_the_refinement(method):
    torch.manual_seed(0)
    model = tiny_llama(vocab=96, layers=2, pad_token_id=None)
    config = InfoQConfig(
        bits=(2, 4, 8),
        budget={"avg_bits": 3.0},
        method=method,
        group_size=16,
        calibration=lm_batches(),
        refine_passes=2,
        rounding="rtn",
    )
    result = quantize_with_infoq(model, config, skip_modules=["lm_head"], progress=False)
    assert result.table.method == method and result.summary["method"] == method
    assert result.policy.report.refinement is not None  # the same whole-model refinement as every method
    assert result.summary["avg_bits"] <= 3.0 + 1e-9


PEAK_CHILD = r"""
import re
import torch
from tests.helpers.models import tiny_llama
from infoq_hf.sensitivity import search

def status(key):
    return int(re.search(key + r":\s+(\d+)", open("/proc/self/status").read()).group(1)) / 1024

model = tiny_llama(vocab=16000, layers=1)
for n in (4, 16):
    gen = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(0, 16000, (2, 64), generator=gen)} for _ in range(n)]
    open("/proc/self/clear_refs", "w").write("5")  # peak RSS := current RSS
    base = status("VmRSS")
    search(model, batches, bits=(4, 8), skip_modules=["lm_head"], max_samples=256, num_directions=8, progress=False)
    print(n, status("VmHWM") - base)
"""


def test_search_memory_does_not_grow_with_the_number_of_batches():
    """An InfoQ search over 16 batches peaks no higher than over 4 (each batch's logits: 8 MiB), within a quarter
    of the 12 extra batches' logits; a search that kept every batch's output would peak 96 MiB higher. glibc's
    mmap threshold is fixed so that freed tensors leave the resident set (RSS then follows live memory)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    if not Path("/proc/self/clear_refs").exists() or sys.platform != "linux":
        pytest.skip("needs Linux /proc to reset the peak RSS")
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20), "PYTHONPATH": "."}
    out = subprocess.run(
        [sys.executable, "-c", PEAK_CHILD],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    peaks = dict(line.split() for line in out.stdout.strip().splitlines())
    extra_logits = 12 * 2 * 64 * 16000 * 4 / 2**20
    assert float(peaks["16"]) - float(peaks["4"]) < extra_logits / 4, peaks


def test_replay_check_digest_sees_a_one_ulp_change_and_disables_a_wrong_cache():
    from infoq_hf.quant.apply import default_forward, quantizable_layers
    from infoq_hf.quant.quantizer import WeightScheme as Scheme
    from infoq_hf.sensitivity.probe import Prober, _tree_digest

    x = torch.randn(3, 5)
    y = x.clone()
    y[1, 2] = torch.nextafter(y[1, 2], torch.tensor(float("inf")))
    assert _tree_digest((x, {"a": x})) == _tree_digest((x.clone(), {"a": x.clone()}))
    assert _tree_digest(x) != _tree_digest(y) and _tree_digest(x) != _tree_digest(x.reshape(5, 3))
    model, batches = tiny_llama(vocab=96, layers=3, pad_token_id=None), lm_batches()
    layers = {n: m for n, m in quantizable_layers(model).items() if n != "lm_head"}
    with Prober(model, layers, batches, default_forward, lambda n, b: Scheme(b)) as prober:
        prober.build_prefix_cache()
        assert prober.block_names  # the exact replay is kept
        reference = [_tree_digest(default_forward(model, b)) for b in batches]
        assert prober._replay_is_exact(reference)
        cached = prober.cache[prober.block_names[-1]][0]
        cached.view(-1)[0] = torch.nextafter(cached.view(-1)[0], torch.tensor(float("inf")))
        assert not prober._replay_is_exact(reference)
