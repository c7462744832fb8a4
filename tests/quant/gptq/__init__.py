"""Tests of infoq_hf.quant.gptq: the algorithm, its candidates and costs, offloaded and distributed runs."""
