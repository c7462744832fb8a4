"""`PackingScheme`: the table records the scheme it was scored with, the policy from `allocate`
carries it, `quantize_model` packs with it and refuses another; the shorthand keywords still work."""

from __future__ import annotations

import pytest
import torch

from infoq_hf import Budget, allocate, expected_size_bytes, quantize_model, search
from infoq_hf.quant import packed_layers
from infoq_hf.quant.scheme import PackingScheme, resolve_scheme
from infoq_hf.sensitivity import SensitivityTable
from tests.helpers.models import labelled_batches, small_cnn


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))


def test_table_records_the_scheme_and_the_policy_packs_with_it():
    model = _mlp()
    scheme = PackingScheme(group_size=16, symmetric=True)
    table = search(model, None, bits=(2, 4, 8), method="weight_mse", scheme=scheme, progress=False)
    assert table.scheme == scheme
    assert SensitivityTable.from_dict(table.to_dict()).scheme == scheme  # through the JSON file
    policy = allocate(table, Budget(avg_bits=4))
    assert policy.scheme == scheme
    quantize_model(model, policy)  # no settings: the policy's scheme
    layers = packed_layers(model)
    assert {m.group_size for m in layers.values()} == {16} and all(m.symmetric for m in layers.values())
    assert expected_size_bytes(model) == policy.report.size_bytes  # the budgeted bytes are the packed bytes


def test_packing_with_another_layout_than_the_budgeted_one_is_an_error():
    model = _mlp()
    table = search(model, None, bits=(2, 4, 8), method="weight_mse", group_size=16, progress=False)
    policy = allocate(table, Budget(avg_bits=4))
    with pytest.raises(ValueError, match=r"allocated for packing with group 16.* asked for with group 32"):
        quantize_model(model, policy, group_size=32)
    with pytest.raises(ValueError, match="symmetric"):
        quantize_model(model, policy, scheme=PackingScheme(group_size=16, symmetric=True))
    quantize_model(model, policy, group_size=16)  # the same layout, said again, is fine
    assert {m.group_size for m in packed_layers(model).values()} == {16}


def test_shorthand_and_scheme_resolve_to_one_value():
    default = PackingScheme(group_size=128)
    assert resolve_scheme(None, default) == default
    from infoq_hf.quant.scheme import UNSET

    assert resolve_scheme(None, default, group_size=64, symmetric=UNSET) == PackingScheme(group_size=64)
    assert resolve_scheme({"group_size": 32, "rounding": "gptq"}, default) == PackingScheme(32, rounding="gptq")
    with pytest.raises(ValueError, match="not both"):
        resolve_scheme(PackingScheme(), default, group_size=64)
    with pytest.raises(ValueError, match="rounding"):
        PackingScheme(rounding="nearest")
    with pytest.raises(ValueError, match="group_size"):
        PackingScheme(group_size=0)
    assert PackingScheme(rounding="gptq").same_format(PackingScheme())
    assert not PackingScheme(conv_group_size=8).same_format(PackingScheme())
    assert PackingScheme(clip_search=True).same_format(PackingScheme())  # clipping picks codes, not layout
    assert PackingScheme(clip_search=True).codes_settings() != PackingScheme().codes_settings()


def test_conv_layers_take_the_conv_group_size():
    model, batches = small_cnn(), labelled_batches(1)
    scheme = PackingScheme(group_size=None, conv_group_size=8)
    table = search(model, batches, bits=(4, 8), method="weight_mse", scheme=scheme, progress=False)
    quantize_model(model, allocate(table, Budget(avg_bits=6)))
    groups = {type(m).__name__: m.group_size for m in packed_layers(model).values()}
    assert groups.get("QuantConv2d") == 8 and groups.get("QuantLinear", None) is None
