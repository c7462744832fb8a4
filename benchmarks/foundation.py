"""The foundation's numbers, printed from live computation (the tests assert the same facts).

    python -m benchmarks.foundation
"""

from __future__ import annotations

import math
import random

import timm
import torch
import transformers

from infoq_hf import BitPolicy, bitops, count_macs, expected_size_bytes, model_size_bytes, quantizable_layers, quantize_model
from infoq_hf.quant import WeightScheme, dequantize_model, pack, packed_weight_bytes, quantize_weight, unpack

from .common import machine


def main():
    print(f"# foundation numbers; {machine()}")
    ok = all(torch.equal(unpack(pack(c, b), b, c.numel()), c)
             for b in range(2, 9) for n in (1, 7, 9, 1001, 4099)
             for c in [torch.randint(0, 1 << b, (n,), dtype=torch.uint8)])
    print(f"pack/unpack round trip bit-exact for b=2..8, sizes 1..4099: {ok}")

    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    errs = [float(((quantize_weight(w, WeightScheme(b)).dequantize() - w) ** 2).mean()) for b in range(2, 9)]
    print("weight MSE by bits 2..8 (Gaussian 64x256, per channel):", ", ".join(f"{e:.2e}" for e in errs))
    w = torch.randn(32, 256, generator=torch.Generator().manual_seed(1)) * 0.02
    w[:, 5] *= 200.0
    w[:, 200] *= 100.0
    g, c = (float(((quantize_weight(w, WeightScheme(4, gs)).dequantize() - w) ** 2).mean()) for gs in (64, None))
    print(f"outlier columns, 4 bits: per-group(64) MSE {g:.3e} vs per-channel {c:.3e} ({c / g:.1f}x worse)")

    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False).eval()
    x = torch.randn(1, 3, 224, 224)
    names = quantizable_layers(model)
    w8a8 = BitPolicy({n: {"w_bits": 8, "a_bits": 8} for n in names})
    print(f"ResNet18 @224: {sum(count_macs(model, x).values()) / 1e9:.3f} GMACs, "
          f"W8A8 {bitops(model, w8a8, x) / 1e9:.1f} GBitOps, fp32 {bitops(model, None, x) / 1e9:.0f} GBitOps")
    rng = random.Random(0)
    policy = BitPolicy({n: rng.randint(2, 8) for n in names})
    quantize_model(model, policy)
    size, theory = model_size_bytes(model), expected_size_bytes(model)
    with torch.no_grad():
        out = model(x)
        diff = float((out - dequantize_model(model)(x)).abs().max())
    print(f"ResNet18 random policy over 2..8 bits: stored {size} B vs theory {theory} B "
          f"({100 * abs(size - theory) / theory:.2f}% apart); packed vs dequantized float forward max |diff| {diff:.1e}")

    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    torch.manual_seed(0)
    llama = transformers.LlamaForCausalLM(cfg).eval()
    ids = torch.randint(0, 128, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = llama(input_ids=ids).logits
    layers = quantizable_layers(llama, skip_modules=["lm_head"])
    fp16 = sum(m.weight.numel() * 2 for m in layers.values())
    packed = sum(packed_weight_bytes(m.weight.shape, 4, 64, False) for m in layers.values())
    quantize_model(llama, {n: 4 for n in layers}, group_size=64, skip_modules=["lm_head"])
    with torch.no_grad():
        rel = float((llama(input_ids=ids).logits - ref).norm() / ref.norm())
    print(f"tiny Llama (random init) 4-bit group 64: relative logit error {rel:.3f}; "
          f"packed bytes {packed / fp16:.3f}x the fp16 bytes of the quantized layers")
    assert math.isfinite(rel)


if __name__ == "__main__":
    main()
