"""Tests of infoq_hf.sensitivity: the probing engine, the data-free methods, input checks, distributed probes."""
