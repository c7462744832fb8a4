"""Tests of infoq_hf.integrations: InfoQConfig, the transformers quantizer, timm."""
