"""GPTQ rounding (Frantar et al., 2022): the algorithm on one weight (`algorithm`), the input Hessians
(`hessian`), the block-by-block calibration walk (`walk`), sequential GPTQ over a model (`model`) and
every layer's rounding at every candidate width for the allocation (`candidates`)."""

from .algorithm import GPTQOptions, gptq_quantize, gptq_quantize_widths, quantize_layer_gptq, quantize_layer_gptq_widths
from .candidates import GPTQCandidates, PackedCandidate, gptq_candidates
from .hessian import HessianAccumulator
from .model import gptq_quantize_model
from .walk import GPTQReport

__all__ = [
    "GPTQCandidates",
    "GPTQOptions",
    "GPTQReport",
    "HessianAccumulator",
    "PackedCandidate",
    "gptq_candidates",
    "gptq_quantize",
    "gptq_quantize_model",
    "gptq_quantize_widths",
    "quantize_layer_gptq",
    "quantize_layer_gptq_widths",
]
