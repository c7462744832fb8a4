"""The default pipeline on decoder architectures besides Llama: Qwen2 (q/k/v biases), Qwen3 (q/k norms),
Gemma 3 (scaled embedding, sliding window), Phi-3 (fused qkv and gate/up projections), Mistral, GPT-2
(transformers' Conv1D layers). Each is
quantized on load with GPTQ and the whole-model check, saved, and reloaded with identical logits.
Tiny random models built from configs; no network."""

from __future__ import annotations

import pytest
import torch

from infoq_hf import InfoQConfig, quantize_pretrained
from tests.helpers.models import lm_batches

transformers = pytest.importorskip("transformers")

VOCAB = 96
SIZES = dict(
    vocab_size=VOCAB,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
ARCHITECTURES = {
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {"head_dim": 16, "sliding_window": 8}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"pad_token_id": 0}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 8}),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", None),
}


def _model(architecture: str):
    config_class, model_class, extra = ARCHITECTURES[architecture]
    if extra is None:  # GPT-2 names its sizes its own way
        config = getattr(transformers, config_class)(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64)
    else:
        config = getattr(transformers, config_class)(**SIZES, **extra)
    torch.manual_seed(0)
    return getattr(transformers, model_class)(config).eval()


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_the_default_pipeline_packs_saves_and_reloads_each_architecture(architecture, tmp_path):
    model = _model(architecture)
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
    model = _model("gemma3")
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
