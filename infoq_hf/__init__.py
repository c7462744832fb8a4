"""infoq-hf: InfoQ mixed-precision quantization for the Hugging Face ecosystem.

Data flows one way: calibration -> `search` (sensitivity table) -> `allocate` (ILP, a
`BitPolicy`) -> `refine` (whole-model KL) -> `quantize_model` (packed layers) -> checkpoint / Hub.
Importing the package registers quant_method "infoq" with transformers, so pre-quantized
checkpoints load with `from_pretrained` after `import infoq_hf`.
"""

from .accounting import bitops, compression_ratio, count_macs, expected_size_bytes, model_size_bytes
from .allocation import allocate, compare_with_uniform, pareto_sweep, plot_pareto, refine
from .calibration import CalibrationSpec, load_calibration
from .checkpoint import build_packed_modules, check_checkpoint_tensors
from .config import InfoQConfig
from .export import export_compressed_tensors
from .hub import load_from_hub, push_to_hub
from .integrations import InfoQQuantizer, load_quantized, save_quantized
from .integrations.transformers import quantization_result, quantize_pretrained
from .integrations.transformers import register as _register_with_transformers
from .pipeline import QuantizationResult, format_summary, quantize_with_infoq
from .policy import BitPolicy, Budget, LayerBits
from .quant import (
    QuantConv2d,
    QuantEmbedding,
    QuantLinear,
    QuantTiedLinear,
    WeightScheme,
    calibrate_activation_ranges,
    dequantize_model,
    quantizable_layers,
    quantize_model,
    set_compute_dtype,
)
from .quant.gptq import GPTQOptions, gptq_quantize, gptq_quantize_model
from .saving import save
from .sensitivity import SensitivityTable, search
from .version import __version__  # noqa: F401  (infoq_hf.__version__)

_register_with_transformers()

__all__ = [
    "BitPolicy",
    "Budget",
    "CalibrationSpec",
    "GPTQOptions",
    "InfoQConfig",
    "InfoQQuantizer",
    "LayerBits",
    "QuantConv2d",
    "QuantEmbedding",
    "QuantLinear",
    "QuantTiedLinear",
    "QuantizationResult",
    "SensitivityTable",
    "WeightScheme",
    "allocate",
    "bitops",
    "build_packed_modules",
    "calibrate_activation_ranges",
    "check_checkpoint_tensors",
    "compression_ratio",
    "count_macs",
    "dequantize_model",
    "expected_size_bytes",
    "export_compressed_tensors",
    "format_summary",
    "gptq_quantize",
    "gptq_quantize_model",
    "load_calibration",
    "load_from_hub",
    "load_quantized",
    "model_size_bytes",
    "pareto_sweep",
    "plot_pareto",
    "push_to_hub",
    "quantizable_layers",
    "quantization_result",
    "quantize_model",
    "quantize_pretrained",
    "quantize_with_infoq",
    "compare_with_uniform",
    "refine",
    "set_compute_dtype",
    "save",
    "save_quantized",
    "search",
]
