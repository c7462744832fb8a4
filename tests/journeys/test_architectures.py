"""The default pipeline on decoder architectures besides Llama: Qwen2 (q/k/v biases), Qwen3 (q/k norms),
Gemma 3 (scaled embedding, sliding window), Phi-3 (fused qkv and gate/up projections), Mistral, GPT-2
(transformers' Conv1D layers). Each is quantized on load with GPTQ and the whole-model check, saved,
and reloaded with identical logits. Tiny random models built from configs; no network."""

from __future__ import annotations

import pytest
import torch

from infoq_hf import InfoQConfig, quantize_pretrained
from tests.helpers.models import DECODERS, lm_batches, tiny_decoder

transformers = pytest.importorskip("transformers")

VOCAB = 96


@pytest.mark.parametrize("architecture", list(DECODERS))
def test_the_default_pipeline_packs_saves_and_reloads_each_architecture(architecture, tmp_path):
    model = tiny_decoder(architecture, vocab=VOCAB)
    kinds = ("Linear", "Conv1D")  # torch's and transformers' (GPT-2) linear layers
    linear = {n for n, m in model.named_modules() if type(m).__name__ in kinds and n != "lm_head"}
    batches = lm_batches(VOCAB)
    config = InfoQConfig(budget={"avg_bits": 3.5}, group_size=32, calibration=batches, rounding="gptq")
    result = quantize_pretrained(model, config, progress=False)
    assert set(result.policy) == linear  # every decoder projection, fused ones included, and nothing else
    assert result.summary["avg_bits"] <= 3.5 + 1e-9
    assert result.summary["allocation"]["refinement"]["kept"] in result.summary["allocation"]["refinement"]["kl_starts"]
    model.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = batches[0]["input_ids"]
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_gemmas_scaled_embedding_is_allocated_and_packed_with_its_scale(tmp_path):
    model = tiny_decoder("gemma3", vocab=VOCAB)
    batches = lm_batches(VOCAB)
    config = InfoQConfig(
        budget={"avg_bits": 3.5}, group_size=32, calibration=batches, rounding="gptq", quantize_embeddings=True
    )
    result = quantize_pretrained(model, config, progress=False)
    assert "model.embed_tokens" in result.policy and model.model.embed_tokens.output_scale == 8.0  # sqrt(64)
    model.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    ids = batches[0]["input_ids"]
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)
