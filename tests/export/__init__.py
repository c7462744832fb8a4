"""Tests of the exports: compressed-tensors (transformers, vLLM) and GGUF."""
