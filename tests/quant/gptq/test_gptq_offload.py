"""A tiny Llama dispatched with accelerate's CPU offload hooks (every weight on the meta device, its
copy held by the hooks) gets the same GPTQ candidates and the same sequential GPTQ codes as the
undispatched model, and its weights come back unchanged from the candidates' prefix runs."""

import copy

import pytest
import torch

from infoq_hf import quantizable_layers
from infoq_hf.quant.gptq import gptq_candidates, gptq_quantize_model
from infoq_hf.quant.scheme import PackingScheme
from tests.helpers.models import lm_batches, tiny_llama

accelerate = pytest.importorskip("accelerate")

BITS = (2, 3, 4, 8)
SCHEME = PackingScheme(group_size=32)


def test_offloaded_llama_gets_the_same_candidates_and_codes():
    model = tiny_llama(vocab=96, layers=2, pad_token_id=None, max_position_embeddings=64)
    names = [n for n in quantizable_layers(model) if n != "lm_head"]
    batches = lm_batches()
    offloaded = accelerate.cpu_offload(copy.deepcopy(model), execution_device=torch.device("cpu"))
    assert offloaded.get_submodule(names[0]).weight.device.type == "meta"
    stored = {n: offloaded.get_submodule(n)._hf_hook.weights_map["weight"].clone() for n in names}
    widths = {n: BITS for n in names}
    prefix = {n: (3, 2, 4)[i % 3] for i, n in enumerate(names)}
    for kw in ({}, {"prefix_bits": prefix, "options": {"act_order": True}}):
        a = gptq_candidates(model, widths, batches, scheme=SCHEME, progress=False, **kw)
        b = gptq_candidates(offloaded, widths, batches, scheme=SCHEME, progress=False, **kw)
        assert a.error_ratio == b.error_ratio and set(a.rounded) == set(b.rounded) == {
            (n, w) for n in names for w in BITS
        }
        for key in a.rounded:
            assert torch.equal(a.weight(*key), b.weight(*key)), key
    for n in names:  # the prefix runs wrote through the hooks' copies and put them back
        assert torch.equal(offloaded.get_submodule(n)._hf_hook.weights_map["weight"], stored[n]), n

    policy = {n: 2 + i % 3 for i, n in enumerate(names)}
    reference = copy.deepcopy(model)
    gptq_quantize_model(reference, policy, batches, scheme=SCHEME, progress=False)
    report = gptq_quantize_model(offloaded, policy, batches, scheme=SCHEME, progress=False)
    assert report.layers == len(names) and report.blocks == 2
    for n in names:
        a, b = reference.get_submodule(n), offloaded.get_submodule(n)
        assert torch.equal(a.weight_packed, b.weight_packed) and torch.equal(a.weight_scale, b.weight_scale), n
    test = torch.randint(0, 96, (2, 16), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(reference(test).logits, offloaded(test).logits)
