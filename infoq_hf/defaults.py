"""Defaults shared by layers that must not import each other (a leaf module: everything may import it)."""

# Random moves the pipeline's refinement tries after comparing the ILP's allocation with the widest
# uniform one: none by default. On SmolLM2 moves judged on a few calibration windows did not carry to
# dev text, while the comparison alone was the best and cheapest choice (benchmarks/RESULTS.md, §1).
DEFAULT_REFINE_PASSES = 0
# Independent refinement chains when moves are asked for: one chain's outcome varies with its seed.
DEFAULT_REFINE_CHAINS = 3
