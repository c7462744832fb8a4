"""Tests of the checkpoint: atomic saves, digests, header checks, reading a folder without loading it."""
