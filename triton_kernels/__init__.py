"""Fused Triton kernels, shipped as ``pit_sampler.triton_kernels``: :mod:`.sweep` (the Picard sweep) and
:mod:`.table` (the unmask-step table), over the shared noise (:mod:`.philox`) and jump-count
(:mod:`.jumps`) helpers. Registered with :mod:`pit_sampler.ops` by :mod:`pit_sampler.backends.triton`;
design notes in ``docs/triton.md``."""
