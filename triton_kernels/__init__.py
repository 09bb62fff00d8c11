"""Fused Triton kernels, shipped as ``pit_sampler.triton_kernels`` (one module per op)."""
