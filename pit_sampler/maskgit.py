"""``MaskGITSampler``: k positions per step by confidence, margin, entropy or at random (MaskGIT /
LLaDA orders, semi-autoregressive blocks), sequential or exact parallel-in-time.

A thin front end on the engine (:mod:`pit_sampler.engine`) with the k-per-step rule
(:mod:`pit_sampler.steps.maskgit`, which documents the process). ``window = 1`` (default) is the
sequential sampler; ``window > 1`` (or ``"auto"``) runs exact Picard windows and, with ``tol = 0``,
gives the same tokens, bit for bit, for a batch-invariant denoiser. Everything the engine offers
applies: ``max_rows``, ``sync_every``, ``compile``, ``cuda_graph``, ragged batches and rows with
nothing to fill, errors raised only for slices the sequential chain visits.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .adapters import resolve_sampler_kwargs
from .config import MaskGITConfig, SamplerConfig
from .engine.accept import Acceptance
from .engine.result import SampleResult
from .engine.run import Engine
from .noise import sample_seeds
from .samplers import checked_x_init
from .steps.maskgit import MaskGIT

Denoiser = Callable[[Tensor, Tensor], Tensor]


class MaskGITSampler:
    """k-per-step unmasking (module docstring). ``sample(x_init, seed)`` returns a :class:`SampleResult`.

    ``config``: a :class:`~pit_sampler.config.MaskGITConfig` (or a plain
    :class:`~pit_sampler.config.SamplerConfig`); keyword arguments are its fields (``order``,
    ``unmask_schedule``, ``block_length``, ``window``, ``tol``, ``mode``, ``max_iters`` and every
    :class:`~pit_sampler.config.SamplerConfig` field) and override ``config``'s."""

    def __init__(self, denoiser: Denoiser, config: SamplerConfig | None = None, **kwargs):
        if not callable(denoiser):
            raise TypeError(f"denoiser must be callable, got {type(denoiser).__name__}")
        if getattr(denoiser, "block_causal", False):
            raise ValueError("denoiser is block-causal (block_causal=True): MaskGITSampler samples the whole sequence "
                             "in one run; use TauLeapingSampler or PITSampler, which sample it block by block")
        given = MaskGITConfig.arguments(config, kwargs, family=SamplerConfig)
        given = resolve_sampler_kwargs(denoiser, given, keys=("mask_id", "vocab_size"))
        if "mask_id" not in given or "num_steps" not in given:
            raise TypeError("a sampler needs mask_id and num_steps (mask_id may come from a denoiser adapter)")
        self.config = c = MaskGITConfig(**given)
        self.denoiser = denoiser
        rule = MaskGIT.build(c.mask_id, c.num_steps, c.temperature, c.order, c.block_length, c.unmask_schedule)
        self.engine = Engine(denoiser, rule, c, window=c.window, acceptance=Acceptance(c.mode, c.tol, c.max_iters),
                             sync_every=c.sync_every, cuda_graph=c.cuda_graph)

    @torch.no_grad()
    def sample(self, x_init: Tensor, seed: int | Tensor = 0) -> SampleResult:
        """Fill every ``mask_id`` position of ``x_init`` (``[B, L]``; other positions are kept);
        ``seed`` as for :meth:`pit_sampler.TauLeapingSampler.sample`."""
        x = checked_x_init(x_init, self.config)
        return self.engine.sample(x, sample_seeds(seed, x.shape[0], x.device))

    @property
    def exact(self) -> bool:
        return self.engine.acceptance.is_exact(self.engine.max_window)
