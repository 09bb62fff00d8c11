"""Step rules: what one sampling step does, plugged into the engine (:mod:`pit_sampler.engine`).

* :mod:`.tau_leaping`: absorbing diffusion by tau-leaping (Poisson jump counts, both
  parametrizations), :class:`~pit_sampler.TauLeapingSampler` and :class:`~pit_sampler.PITSampler`;
* :mod:`.maskgit`: k positions per step by confidence, margin, entropy or at random (MaskGIT /
  LLaDA orders, semi-autoregressive blocks), :class:`~pit_sampler.MaskGITSampler`.

The interface is :class:`.base.StepRule`.
"""
