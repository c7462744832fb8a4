"""Tests of infoq_hf.allocation: the ILP, its solvers and verifier, the refinement."""
