"""Bridges to other libraries: the transformers quantizer and timm checkpoints."""

from .timm import load_quantized, save_quantized
from .transformers import InfoQQuantizer, register

__all__ = ["InfoQQuantizer", "load_quantized", "register", "save_quantized"]
