"""The GGUF benchmark's size matching: the average width whose file takes a preset's bytes."""

from __future__ import annotations

import pytest

from benchmarks.gguf_llamacpp import matched_avg_bits


@pytest.mark.parametrize("bits", [4.0, 4.25, 5.0, 8.0])
def test_the_matched_width_gives_back_the_file_size_it_was_matched_to(bits):
    rest, weights = 123_456, 1_000_000  # bytes besides the quantized weights; weights quantized
    f32_bytes = rest + 4 * weights
    target = rest + weights * (bits + 0.5) / 8  # a width plus one float16 scale per 32 weights
    assert matched_avg_bits(f32_bytes, weights, target) == pytest.approx(bits, abs=1e-12)


def test_a_q8_0_file_of_the_whole_model_matches_eight_bits():
    weights, rest = 32 * 1000, 5000
    q8_0 = rest + weights // 32 * 34  # Q8_0: 32 int8 codes and a float16 scale per block
    assert matched_avg_bits(rest + 4 * weights, weights, q8_0) == pytest.approx(8.0)
