"""Tests of infoq_hf.calibration: sources, batching, errors."""
