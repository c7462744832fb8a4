"""infoq_hf.accounting against ground truth: the MACs and BitOPs HAWQ-V3 reports for ResNet-18, the stored
size of a packed model byte for byte."""

import math

import pytest
import torch
import torch.nn as nn

from infoq_hf.accounting import bitops, count_macs, expected_size_bytes, model_size_bytes
from infoq_hf.quant import quantizable_layers, quantize_model


def test_resnet18_macs_and_bitops_match_hawq_v3():
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet18", pretrained=False).eval()
    x = torch.randn(1, 3, 224, 224)
    macs = sum(count_macs(model, x).values())
    assert abs(macs / 1e9 - 1.814) < 0.001
    w8a8 = {n: {"w_bits": 8, "a_bits": 8} for n in quantizable_layers(model)}
    assert abs(bitops(model, w8a8, x) / 1e9 - 116) / 116 < 0.01
    assert abs(bitops(model, None, x) / 1e9 - 1858) / 1858 < 0.01  # fp32 = 32 x 32


def test_expected_size_matches_stored_size_for_linear_model():
    model = nn.Sequential(nn.Linear(100, 30), nn.Linear(30, 7))
    quantize_model(model, {"0": 3, "1": 6})
    manual = (math.ceil(3000 * 3 / 8) + 30 * 5 + 30 * 4) + (math.ceil(210 * 6 / 8) + 7 * 5 + 7 * 4)
    assert model_size_bytes(model) == expected_size_bytes(model) == manual
