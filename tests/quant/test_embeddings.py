"""Packed embeddings: exact lookups, a tied LM head that shares the codes (one tensor, one width, stored once),
the embedding as a layer of the search and the ILP, and loading back bit-identically."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open

from infoq_hf import (
    BitPolicy,
    Budget,
    InfoQConfig,
    allocate,
    bitops,
    compare_with_uniform,
    dequantize_model,
    quantize_model,
    search,
)
from infoq_hf.accounting import count_macs
from infoq_hf.allocation import embedding_starts
from infoq_hf.integrations.transformers import quantize_pretrained
from infoq_hf.quant import WeightScheme, fake_quantize_weight, quantize_weight
from infoq_hf.quant.modules import QuantEmbedding, QuantLinear, QuantTiedLinear
from tests.helpers.kl import true_kl
from tests.helpers.models import lm_batches, tiny_decoder, tiny_llama


def _tied_llama():
    return tiny_llama(tie_word_embeddings=True, vocab=96, pad_token_id=None)


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("dim, group_size", [(64, 32), (36, None)], ids=["row-aligned", "unaligned"])
def test_lookups_are_exact_rows_of_the_quantized_table(bits, dim, group_size):
    torch.manual_seed(bits)
    float_layer = nn.Embedding(50, dim)
    q = QuantEmbedding.from_float(float_layer, w_bits=bits, group_size=group_size)
    expected = fake_quantize_weight(float_layer.weight.detach(), WeightScheme(bits, group_size, False))
    assert torch.equal(q.dequantized_weight(), expected)
    ids = torch.randint(0, 50, (3, 7))
    assert torch.equal(q(ids), expected[ids])
    q.to(torch.bfloat16)  # the rows follow the model's dtype; the codes and float32 scales do not change
    assert q(ids).dtype == torch.bfloat16 and q.weight_scale.dtype == torch.float32
    assert torch.equal(q(ids), expected[ids].bfloat16())


def test_a_tied_head_multiplies_by_the_embeddings_codes_and_dequantizes_back_to_a_tie():
    model = _tied_llama()
    policy = {"model.embed_tokens": 3, "re:model\\.layers\\..*": 4}
    packed = quantize_model(copy.deepcopy(model), policy, group_size=32)
    head, embedding = packed.lm_head, packed.model.embed_tokens
    assert isinstance(head, QuantTiedLinear) and head.embedding is embedding and isinstance(embedding, QuantEmbedding)
    assert not list(head.parameters()) and not list(head.buffers())  # the codes live once, in the embedding
    x = torch.randn(2, 5, 64)
    torch.testing.assert_close(head(x), F.linear(x, embedding.dequantized_weight()), rtol=1e-5, atol=1e-6)
    ids = lm_batches()[0]["input_ids"]
    with torch.no_grad():
        logits = packed(input_ids=ids).logits
        back = dequantize_model(copy.deepcopy(packed))
        assert back.lm_head.weight is back.model.embed_tokens.weight  # the tie is a tie again
        assert torch.allclose(back(input_ids=ids).logits, logits, atol=1e-5, rtol=1e-5)
        bf16 = copy.deepcopy(packed).to(torch.bfloat16)
        fast = bf16(input_ids=ids).logits
        assert bf16.lm_head.embedding.kernel_layout(x.bfloat16()) is not None  # the head takes the int4 kernel
        assert torch.allclose(fast.float(), logits, atol=0.1, rtol=0.05)


def test_regexes_never_reach_embeddings_and_bad_policies_are_refused():
    model = _tied_llama()
    packed = quantize_model(copy.deepcopy(model), {"re:.*": 4}, group_size=32, skip_modules=["lm_head"])
    assert type(packed.model.embed_tokens) is nn.Embedding  # a regex policy means what it meant before
    with pytest.raises(ValueError, match="tied"):
        quantize_model(copy.deepcopy(model), {"model.embed_tokens": 4, "lm_head": 4}, group_size=32)
    with pytest.raises(ValueError, match="token ids"):
        quantize_model(copy.deepcopy(model), {"model.embed_tokens": {"w_bits": 4, "a_bits": 8}}, group_size=32)


def test_the_search_and_the_ilp_take_the_tied_pair_as_one_layer():
    model, batches = _tied_llama(), lm_batches()
    table = search(
        model, batches, bits=(2, 3, 4, 8), group_size=32, skip_modules=["lm_head"], embeddings=True, progress=False
    )
    entry = table.layers["model.embed_tokens"]
    assert "lm_head" not in table.layers and entry["kind"] == "embedding" and entry["params"] == 96 * 64
    one_sample = {"input_ids": batches[0]["input_ids"][:1]}  # the table counts MACs per sample
    assert entry["macs"] == count_macs(model, one_sample)["lm_head"]  # the head's MACs, at the embedding's width
    assert all(entry["w"][a] >= entry["w"][b] for a, b in [(2, 3), (3, 4), (4, 8)])
    without = search(model, batches, bits=(2, 3, 4, 8), group_size=32, skip_modules=["lm_head"], progress=False)
    assert "model.embed_tokens" not in without.layers
    policy = allocate(table, Budget(avg_bits=3.0))
    packed = quantize_model(copy.deepcopy(model), policy, group_size=32)
    assert packed.model.embed_tokens.w_bits == policy["model.embed_tokens"].w_bits
    assert bitops(packed, None, batches[0]) == bitops(model, policy, batches[0])


def test_the_whole_model_check_weighs_the_embedding_pinned_wider_and_keeps_the_closest_packed_model():
    """The ILP's solution, uniform and the ILP re-solved with the embedding pinned wider are each scored by
    the packed model's true KL to the float model; the lowest is kept. The pipeline's check does the same."""
    model, batches = _tied_llama(), lm_batches()
    table = search(
        model, batches, bits=(2, 3, 4, 8), group_size=32, skip_modules=["lm_head"], embeddings=True, progress=False
    )
    ilp = allocate(table, Budget(avg_bits=3.0))
    starts = embedding_starts(ilp)
    assert ilp["model.embed_tokens"].w_bits < 8 and set(starts) == {"pin:model.embed_tokens=8"}
    kept = compare_with_uniform(ilp, model, batches, starts=starts, progress=False)
    r = kept.report.refinement
    configs = {"ilp": {n: lb.w_bits for n, lb in ilp.items()}, "uniform-3": dict.fromkeys(ilp, 3), **starts}
    kls = {
        name: true_kl(model, quantize_model(copy.deepcopy(model), BitPolicy(widths), group_size=32), batches)
        for name, widths in configs.items()
    }
    assert set(r.kl_starts) == set(kls) and r.passes == 3
    assert all(r.kl_starts[name] == pytest.approx(kl, rel=1e-4) for name, kl in kls.items())
    assert r.kept == min(kls, key=kls.get) and {n: lb.w_bits for n, lb in kept.items()} == configs[r.kept]
    assert kept.report.avg_bits <= 3.0 + 1e-9

    config = InfoQConfig(budget={"avg_bits": 3.0}, group_size=32, calibration=batches, quantize_embeddings=True)
    checked = quantize_pretrained(_tied_llama(), config, progress=False).summary["allocation"]["refinement"]
    assert any(name.startswith("pin:model.embed_tokens=") for name in checked["kl_starts"])
    assert checked["kept"] == min(checked["kl_starts"], key=checked["kl_starts"].get)


def test_quantize_embeddings_end_to_end_saves_once_and_reloads_bit_identically(tmp_path):
    from transformers import AutoModelForCausalLM

    model, batches = _tied_llama(), lm_batches()
    float_embedding = model.model.embed_tokens.weight.detach().clone()
    config = InfoQConfig(
        budget={"avg_bits": 3.0},
        group_size=32,
        calibration=batches,
        rounding="gptq",
        quantize_embeddings=True,
        refine_passes=2,
    )
    result = quantize_pretrained(model, config, progress=False)
    embedding = model.model.embed_tokens
    assert isinstance(embedding, QuantEmbedding) and isinstance(model.lm_head, QuantTiedLinear)
    # GPTQ has no Hessian for a lookup: the embedding is rounded to nearest, the decoder by GPTQ, both
    # with the clipping search that clip_search="auto" turns on with GPTQ
    rtn = quantize_weight(float_embedding, WeightScheme(embedding.w_bits, 32, False, clip_search=True))
    assert torch.equal(embedding.codes(), rtn.codes)
    params = {n: m.weight_shape[0] * m.weight_shape[1] for n, m in ((n, model.get_submodule(n)) for n in result.policy)}
    mean = sum(params[n] * result.policy[n].w_bits for n in params) / sum(params.values())
    assert result.summary["avg_bits"] == pytest.approx(mean) and mean <= 3.0 + 1e-9
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    assert not any(k.startswith("lm_head") for k in keys)
    assert {"model.embed_tokens.weight_packed", "model.embed_tokens.weight_scale"} <= keys
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(reloaded.lm_head, QuantTiedLinear) and reloaded.lm_head.embedding is reloaded.model.embed_tokens
    before, after = model.state_dict(), reloaded.state_dict()
    assert set(before) == set(after) and all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        ids = batches[0]["input_ids"]
        assert torch.equal(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_the_compressed_tensors_export_refuses_a_packed_embedding():
    from infoq_hf.export import export_compressed_tensors

    model = quantize_model(_tied_llama(), {"model.embed_tokens": 4, "re:model\\.layers\\..*": 4}, group_size=32)
    with pytest.raises(ValueError, match="packed embedding.*quantize_embeddings"):
        export_compressed_tensors(model, "unused")


def test_lookup_scale_accepts_a_lookup_times_a_constant_only():
    from infoq_hf.quant.modules import lookup_scale

    class Shifted(nn.Embedding):  # claims a scale, adds a shift
        scalar_embed_scale = 2.0

        def forward(self, ids):
            return super().forward(ids) * 2.0 + 1

    class Unnamed(nn.Embedding):  # scales, but says by how much nowhere
        def forward(self, ids):
            return super().forward(ids) * 2.0

    assert lookup_scale(nn.Embedding(8, 4)) == 1.0
    assert lookup_scale(tiny_decoder("gemma3").model.embed_tokens) == 8.0  # sqrt(64)
    assert lookup_scale(Shifted(8, 4)) is None and lookup_scale(Unnamed(8, 4)) is None
    assert lookup_scale(nn.Linear(4, 8)) is None


def test_a_scaled_embedding_packs_with_its_scale_reloads_bit_identically_and_dequantizes(tmp_path):
    """Gemma's embedding packed: a lookup is the dequantized rows times the scale in the model's dtype (as
    Gemma computes it), the tied head multiplies by the unscaled codes, the model equals the float one
    with every packed weight replaced by its dequantized value, and a reload is bit-identical."""
    from transformers import AutoModelForCausalLM

    from infoq_hf.quant.modules import ScaledEmbedding

    model = tiny_decoder("gemma3")
    ids = lm_batches()[0]["input_ids"]
    policy = {"model.embed_tokens": 4, "re:model\\.layers\\..*": 8}
    packed = quantize_model(copy.deepcopy(model), policy, group_size=32)
    embedding = packed.model.embed_tokens
    assert isinstance(embedding, QuantEmbedding) and embedding.output_scale == 8.0
    assert isinstance(packed.lm_head, QuantTiedLinear)
    weight = embedding.dequantized_weight(torch.float32)
    assert torch.equal(embedding(ids), F.embedding(ids, weight) * 8.0)
    x = torch.randn(3, 64)
    torch.testing.assert_close(packed.lm_head(x), F.linear(x, weight), rtol=1e-5, atol=1e-5)
    reference = copy.deepcopy(model)  # the float model with the packed weights' values
    with torch.no_grad():
        for name, m in packed.named_modules():
            if isinstance(m, QuantLinear):
                reference.get_submodule(name).weight.copy_(m.dequantized_weight(torch.float32))
        torch.testing.assert_close(packed(input_ids=ids).logits, reference(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
    packed.save_pretrained(tmp_path)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert reloaded.model.embed_tokens.output_scale == 8.0
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, packed(input_ids=ids).logits)
    restored = dequantize_model(reloaded)
    assert isinstance(restored.model.embed_tokens, ScaledEmbedding)
    with torch.no_grad():
        torch.testing.assert_close(restored(input_ids=ids).logits, packed(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
