"""infoq_hf.policy: names that survive a change of model class, JSON round trips, and the errors of bad
policies and budgets."""

import pytest
import torch.nn as nn

from infoq_hf.policy import BitPolicy, Budget, LayerBits
from infoq_hf.quant import quantizable_layers, quantize_model
from tests.helpers.models import tiny_llama


def _tiny_llama():
    return tiny_llama(hidden=128, intermediate=256, pad_token_id=None, max_position_embeddings=64)


def test_policy_names_survive_model_class_change():
    transformers = pytest.importorskip("transformers")
    causal = _tiny_llama()
    base = transformers.LlamaModel(causal.config)
    causal_names = list(quantizable_layers(causal, skip_modules=["lm_head"]))
    base_names = list(quantizable_layers(base))
    policy = BitPolicy({n: 3 for n in causal_names})  # written for LlamaForCausalLM
    assert set(policy.resolve(base_names)) == set(base_names)
    back = BitPolicy({n: 3 for n in base_names})  # and the other way round
    assert set(back.resolve(causal_names)) == set(causal_names)
    regex = BitPolicy({"re:.*mlp\\..*": 2, "model.layers.0.mlp.up_proj": 5})
    resolved = regex.resolve(causal_names)
    assert resolved["model.layers.0.mlp.up_proj"].w_bits == 5 and resolved["model.layers.1.mlp.down_proj"].w_bits == 2


def test_policy_json_roundtrip_and_errors(tmp_path):
    policy = BitPolicy({"a.b": {"w_bits": 3, "a_bits": None}, "c": {"w_bits": 8, "a_bits": 8}})
    path = tmp_path / "p.json"
    policy.to_json(path)
    assert BitPolicy.from_json(path) == policy
    assert BitPolicy.from_json(policy.to_json())["c"] == LayerBits(8, 8)
    with pytest.raises(ValueError, match="bit-width 9"):
        BitPolicy({"x": 9})
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Conv1d(4, 4, 1))
    with pytest.raises(ValueError, match="lacks"):
        quantize_model(model, {"7": 4})
    with pytest.raises(ValueError, match="Conv1d, which infoq_hf cannot quantize"):
        quantize_model(model, {"2": 4})
    with pytest.raises(ValueError, match="ambiguous"):
        BitPolicy({"fc": 4}).resolve(["a.fc", "b.fc"])
    with pytest.raises(ValueError, match="at least one"):
        Budget()
    with pytest.raises(ValueError, match=">= 1"):
        Budget(compression=0.5)
