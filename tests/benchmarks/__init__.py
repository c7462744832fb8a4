"""Tests of the benchmarks package: the asset registry and the statistics."""
