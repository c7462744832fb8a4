"""The numbers: quantizers, exact bit packing, packed layers, model conversion."""

from .apply import (
    calibrate_activation_ranges,
    default_forward,
    dequantize_model,
    packed_layers,
    quantizable_layers,
    resolve_policy,
    set_compute_dtype,
)
from .lsq import LSQConv2d, LSQLinear, export_packed, prepare_qat, step_parameters  # noqa: F401  (QAT after the search)
from .modules import (
    PACKED_TYPES,
    QuantConv2d,
    QuantEmbedding,
    QuantLinear,
    QuantTiedLinear,
    float_layer_types,
    packed_weight_bytes,
)
from .packing import check_bits, pack, packed_nbytes, unpack
from .quantize import quantize_model
from .quantizer import (
    QuantizedWeight,
    RangeObserver,
    WeightScheme,
    activation_qparams,
    fake_quantize_activation,
    fake_quantize_weight,
    quantize_weight,
)

__all__ = [
    "PACKED_TYPES",
    "QuantConv2d",
    "QuantEmbedding",
    "QuantLinear",
    "QuantTiedLinear",
    "QuantizedWeight",
    "RangeObserver",
    "WeightScheme",
    "activation_qparams",
    "calibrate_activation_ranges",
    "check_bits",
    "default_forward",
    "dequantize_model",
    "fake_quantize_activation",
    "fake_quantize_weight",
    "float_layer_types",
    "pack",
    "packed_layers",
    "packed_nbytes",
    "packed_weight_bytes",
    "quantizable_layers",
    "quantize_model",
    "quantize_weight",
    "resolve_policy",
    "set_compute_dtype",
    "unpack",
]
