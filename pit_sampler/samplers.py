"""The tau-leaping samplers: sequential (``TauLeapingSampler``) and parallel-in-time (``PITSampler``).

Both are thin front ends on the engine (:mod:`pit_sampler.engine`) with the tau-leaping step rule
(:mod:`pit_sampler.steps.tau_leaping`): the sequential sampler runs windows of one step, PIT runs
Picard windows of ``W`` steps, one batched denoiser call per round, and slides each sample's window
past its converged prefix. With ``tol = 0`` the tokens equal the sequential sampler's, bit for bit,
for a batch-invariant denoiser. ``tol > 0`` and ``mode="fixed"`` are approximate and say so in
``SampleResult.exact``.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .adapters import resolve_sampler_kwargs
from .blocks import BlockRunner, BlockSettings
from .config import PITConfig, TauLeapingConfig
from .engine.accept import Acceptance
from .engine.result import SampleResult
from .engine.round import Round
from .engine.run import Engine
from .noise import sample_seeds
from .steps.tau_leaping import TauLeaping
from .steps.trapezoidal import Trapezoidal
from .validation import check_token_batch

Denoiser = Callable[..., Tensor]
__all__ = ["TauLeapingSampler", "PITSampler", "SampleResult"]


def checked_x_init(x_init, config) -> Tensor:
    """``x_init`` as int64, its static facts checked (:func:`~pit_sampler.validation.check_token_batch`;
    CUDA for graphs; the engine checks the ids' range with its first read)."""
    check_token_batch("x_init", x_init)
    if config.cuda_graph and x_init.device.type != "cuda":
        raise ValueError(f"cuda_graph=True needs CUDA tensors, got x_init on {x_init.device}")
    return x_init.to(torch.int64)


class TauLeapingSampler:
    """Sequential tau-leaping: one denoiser call per round; with skip-inactive, each unfinished sample
    at its own next active step. ``sample(x_init, seed)`` returns a :class:`SampleResult`.

    ``config``: a :class:`~pit_sampler.config.TauLeapingConfig` (a :class:`~pit_sampler.config.PITConfig`
    gives the sequential baseline of its run); keyword arguments are its fields and override
    ``config``'s; an adapter's settings fill in the rest (:mod:`pit_sampler.config`).

    ``block_length`` (an int >= 1; ``None``: one block): semi-autoregressive block sampling (BD3-LM):
    blocks of ``block_length`` positions from position 0, left to right, each a full run of the
    process on its masked positions with the model called on the prefix and the block only
    (``x[:, :e_k]``); ``sample`` then returns a :class:`~pit_sampler.blocks.BlockResult` (per-block
    rounds). Without a cache every call recomputes the prefix. ``eos_id``: a sample that draws it in a
    block stops after that block and its later masked positions take ``pad_id`` (default ``eos_id``).
    ``cache``: call the model on the block only, against an exact KV cache of the prefix encoded once
    per block (the protocol of :mod:`pit_sampler.block_cache`; ``None``, the default: when the
    denoiser offers it). A block-causal denoiser (``block_causal = True``, e.g.
    :class:`~pit_sampler.block_causal.HFBlockCausalLM`) sets the default ``block_length`` (its own;
    another is an error). Details: :mod:`pit_sampler.blocks`. These four are arguments of the
    sampler, not config fields."""

    config_type = TauLeapingConfig
    round_type = Round  # a subclass may evaluate a round differently (pit_sampler.distributed)

    def __init__(self, denoiser: Denoiser, config: TauLeapingConfig | None = None, *, block_length: int | None = None,
                 eos_id: int | None = None, pad_id: int | None = None, cache: bool | None = None, **kwargs):
        if not callable(denoiser):
            raise TypeError(f"denoiser must be callable, got {type(denoiser).__name__}")
        given = self.config_type.arguments(config, kwargs, family=TauLeapingConfig)
        given = resolve_sampler_kwargs(denoiser, given)
        if "mask_id" not in given or "num_steps" not in given:
            raise TypeError("a sampler needs mask_id and num_steps (mask_id may come from a denoiser adapter)")
        self.config = c = self.config_type(**given)
        self.denoiser = denoiser
        if c.solver == "trapezoidal":
            rule = Trapezoidal.build(c)
        else:
            rule = TauLeaping.build(c, bool(getattr(denoiser, "supports_positions", False)))
        self.engine = Engine(denoiser, rule, c, sync_every=c.sync_every, cuda_graph=c.cuda_graph,
                             round_type=self.round_type, **self._picard())
        blocks = BlockSettings.build(block_length, eos_id, pad_id, c.mask_id, c.vocab_size, cache, denoiser)
        self.blocks = None if blocks is None else BlockRunner(self.engine, blocks)

    def _picard(self) -> dict:
        """The engine's window and acceptance: sequential."""
        return {}

    @torch.no_grad()
    def sample(self, x_init: Tensor, seed: int | Tensor = 0) -> SampleResult:
        """Fill every ``mask_id`` position of ``x_init`` (``[B, L]``; other positions are kept).

        ``seed``: an int in ``[-2**63, 2**64)`` (its 64 bits key the noise; per-sample seeds are derived
        from it and the slot) or an int64 tensor ``[B]`` of per-sample seeds. With ``max_rows``, the
        batch runs in groups, one after the other (each sample's tokens are the same). With
        ``block_length``, block by block (:mod:`pit_sampler.blocks`). Runs under ``torch.no_grad()``."""
        x = checked_x_init(x_init, self.config)
        seeds = sample_seeds(seed, x.shape[0], x.device)
        return self.engine.sample(x, seeds) if self.blocks is None else self.blocks.sample(x, seeds)

    @property
    def rounds_done(self) -> int:
        """Rounds run so far in the current (or last) ``sample()`` call."""
        return self.engine.rounds_done


class PITSampler(TauLeapingSampler):
    """Parallel-in-time (Picard) sampling over windows of ``window`` steps (arXiv 2607.00773).

    ``window="auto"`` (default) chooses the window each round from the measured call cost and
    convergence (:mod:`pit_sampler.engine.policy`: windows 1, 2, 4, ..., 64, maximising accepted steps
    per second; ``W = 1`` when parallel-in-time does not pay); ``SampleResult.windows`` and ``.policy``
    say what it chose and why. An int fixes the window. Tokens never depend on the window.

    ``mode="exact"`` (default) slides each sample's window past its converged prefix; with ``tol=0``
    the tokens equal :class:`TauLeapingSampler`'s for the same seed. ``tol > 0`` accepts slices whose
    changed fraction of positions is at most ``tol``. ``mode="fixed"`` runs exactly ``max_iters``
    iterations per block of ``window`` steps (exact only if ``max_iters >= window`` or the block
    converged earlier, which ends it early). These four settings are fields of
    :class:`~pit_sampler.config.PITConfig`, so ``config=`` describes a whole run.

    ``max_rows`` (both samplers) is a hard cap on the rows of one denoiser call (a memory budget). A
    batch runs in groups: with a fixed window, ``max(1, max_rows // window)`` samples, so the window
    survives; with ``"auto"``, ``max_rows`` samples (:meth:`~pit_sampler.engine.run.Engine.group_size`
    says why). Exactness is unaffected.

    ``sync_every`` (default: 1 on the CPU, 8 on an accelerator) sets how many rounds run between
    poll points (host reads); a poll never comes later than the run could possibly finish.
    """

    config_type = PITConfig

    def _picard(self) -> dict:
        c = self.config
        return {"window": c.window, "acceptance": Acceptance(c.mode, c.tol, c.max_iters)}

    @property
    def window(self) -> int | str:
        return self.config.window

    @property
    def exact(self) -> bool:
        return self.engine.acceptance.is_exact(self.engine.max_window)
