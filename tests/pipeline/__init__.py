"""Tests of infoq_hf.pipeline: the stages and the pipeline they compose."""
