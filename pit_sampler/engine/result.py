"""What a sampler returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class SampleResult:
    """``tokens [B, L]`` (no mask left); ``rounds``: sequential denoiser calls; ``nfe``: denoiser rows
    evaluated per sample (total compute / B); ``iterations``: sweeps run; ``residuals``: per iteration,
    int32 ``[W]`` positions changed per slice, summed over the batch; ``exact``: whether the result is
    the exact sequential sample; ``windows``: the window of each round; ``policy``: with
    ``window="auto"``, the measured cost model that chose them
    (:meth:`pit_sampler.engine.policy.WindowPolicy.report`); ``logits_rows``: logits rows materialised
    per round on average (``W B L`` for a plain denoiser, about the rows drawn with the positions
    protocol); ``polls``: host reads of device data at poll points after the first;
    ``exchanged_bytes``: bytes this process sent per round to other ranks
    (:mod:`pit_sampler.distributed`; 0 in one process)."""

    tokens: Tensor
    rounds: int
    nfe: float
    iterations: int
    residuals: list[Tensor] = field(default_factory=list)
    exact: bool = True
    windows: list[int] = field(default_factory=list)
    policy: dict | None = None
    logits_rows: float = 0.0
    polls: int = 0
    exchanged_bytes: float = 0.0


def concat(parts: list[SampleResult]) -> SampleResult:
    """One result for groups of a batch sampled one after the other (``max_rows``)."""
    if len(parts) == 1:
        return parts[0]
    B = sum(p.tokens.shape[0] for p in parts)
    windows = [w for p in parts for w in p.windows]
    return SampleResult(
        torch.cat([p.tokens for p in parts]), sum(p.rounds for p in parts),
        sum(p.nfe * p.tokens.shape[0] for p in parts) / B, sum(p.iterations for p in parts),
        [r for p in parts for r in p.residuals], all(p.exact for p in parts), windows, parts[-1].policy,
        sum(p.logits_rows * len(p.windows) for p in parts) / max(1, len(windows)), sum(p.polls for p in parts),
        sum(p.exchanged_bytes * len(p.windows) for p in parts) / max(1, len(windows)),
    )
