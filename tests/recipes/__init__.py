"""Smoke tests of the accelerate recipes under recipes/."""
