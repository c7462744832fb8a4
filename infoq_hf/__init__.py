"""infoq-hf: InfoQ mixed-precision quantization for the Hugging Face ecosystem."""

__version__ = "0.1.0"

from .accounting import bitops, compression_ratio, count_macs, expected_size_bytes, model_size_bytes
from .policy import BitPolicy, Budget, LayerBits
from .quant import (
    QuantConv2d,
    QuantLinear,
    WeightScheme,
    calibrate_activation_ranges,
    dequantize_model,
    quantizable_layers,
    quantize_model,
)
from .sensitivity import SensitivityTable

__all__ = [
    "BitPolicy", "Budget", "LayerBits", "QuantConv2d", "QuantLinear", "SensitivityTable", "WeightScheme",
    "bitops", "calibrate_activation_ranges", "compression_ratio", "count_macs", "dequantize_model",
    "expected_size_bytes", "model_size_bytes", "quantizable_layers", "quantize_model",
]

# transformers integration: importing infoq_hf registers quant_method "infoq" with transformers.
from .checkpoint import build_packed_modules, check_checkpoint_tensors
from .config import InfoQConfig
from .integrations import InfoQQuantizer, load_quantized, save_quantized
from .integrations.transformers import register as _register_with_transformers
from .pipeline import format_summary, quantize_with_infoq

_register_with_transformers()
__all__ += [
    "InfoQConfig", "InfoQQuantizer", "build_packed_modules", "check_checkpoint_tensors", "format_summary",
    "load_quantized", "quantize_with_infoq", "save_quantized",
]
