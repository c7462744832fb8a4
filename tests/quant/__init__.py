"""Tests of infoq_hf.quant: packing, quantizers, packed layers, schemes, kernels, LSQ."""
