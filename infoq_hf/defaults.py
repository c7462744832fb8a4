"""Defaults shared by layers that must not import each other (a leaf module: everything may import it)."""

# Whole-model passes of one refinement chain: sized so the SmolLM2-135M demo (benchmarks/demo.py) stays
# under 10 minutes on 2 CPU cores.
DEFAULT_REFINE_PASSES = 64
# Independent refinement chains InfoQConfig runs (`allocation.refine` itself runs one): one chain's
# outcome varies with its seed (benchmarks/RESULTS.md, `gptq_aware`).
DEFAULT_REFINE_CHAINS = 3
