"""The exact prefix KV cache of block sampling: the protocol a block-causal denoiser offers, and the
view of it the engine calls (docs/blocks.md, "The cache protocol").

**The protocol.** A block-causal denoiser (bidirectional attention inside a block of
``block_length`` positions, causal across blocks; e.g. :class:`pit_sampler.block_causal.HFBlockCausalLM`)
opts in with ``block_causal = True`` and offers, besides the plain call ``den(x [R, e], t)`` on
positions ``0 .. e - 1``:

* ``den.encode(x [B, n], start, cache=None) -> cache``: the cache of ``B`` samples grown by their clean
  tokens ``x`` at positions ``start .. start + n - 1`` (``cache`` covers ``0 .. start - 1``; ``None``
  iff ``start = 0``). Each block of ``x`` attends to the cache, to the earlier blocks of ``x`` and to
  itself, as in the plain call. It may grow ``cache`` in place; only the returned object is used.
* ``den.select(cache, index [B']) -> cache``: the cache of the samples ``index``.
* ``den(x [W B', n], t, positions=None, *, cache, samples [B'], start)``: ``x`` holds the current
  block's positions ``start .. start + n - 1`` only; row ``u B' + b`` is Picard slice ``u`` of the
  cache's sample ``samples[b]`` (so the ``W`` slices of a sample share its cache: no per-row copy).
  Logits ``[W B', n, V]``, or with ``positions`` (flat ``r n + l`` into ``x``) ``[M, V]``. It never
  changes the cache, and equals the plain call on ``cat(prefix, x)`` at the block's positions to
  float rounding (bit for bit makes the cached tokens equal the uncached ones).

**The engine's view** (:class:`CachedBlock`). The engine runs block ``k`` on ``x[:, :e_k]`` exactly
as without a cache (prefix included: the noise stays keyed by absolute positions, so both paths draw
the same noise and no op changes), calling a :class:`CachedBlock` in place of the model. It offers
the positions protocol and ``takes_samples`` (:mod:`pit_sampler.engine.call`): it cuts the block's
positions out of each row, maps flat indices ``r e_k + l`` to ``r n + (l - s_k)``, maps the engine's
sample of each row to its row in the cache, and calls the model on the block only. The rows the
sweep reads are masked positions, all in the block (the prefix is clean); a packed request also has
padding slots (index 0, :mod:`pit_sampler.engine.rows`, rows nobody reads), which map to the block's
first row. A rule that reads the full output gets zeros at the prefix's positions (it reads only
masked positions).

**Bookkeeping** (:class:`PrefixCache`): the cache covers positions ``0 .. covered - 1`` of the
samples ``members`` (indices into the block sampler's batch, in cache order). Before block ``k``,
:meth:`PrefixCache.advance` drops the samples that stopped (``select``) and encodes what is missing
up to ``s_k`` for the samples still running, in one call (a prompt's blocks, a finished block, or
blocks nobody had work in): each finished block is encoded once per sample.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor


def offers_cache(denoiser) -> bool:
    """Whether ``denoiser`` declares the cache protocol (``block_causal`` and ``encode``/``select``)."""
    return bool(getattr(denoiser, "block_causal", False)) and all(
        callable(getattr(denoiser, name, None)) for name in ("encode", "select"))


@dataclass
class PrefixCache:
    """The cache of the block sampler's running samples (module docstring, "Bookkeeping").
    ``calls`` and ``tokens``: the ``encode`` calls made and the positions they processed."""

    denoiser: object
    cache: object = None
    members: list[int] = field(default_factory=list)
    covered: int = 0
    calls: int = 0
    tokens: int = 0

    def advance(self, x: Tensor, live: list[int], start: int) -> None:
        """Cover positions ``0 .. start - 1`` of the samples ``live`` (a subset of the members once
        the cache exists), encoding ``x[live, covered:start]`` in one call."""
        if self.cache is not None and live != self.members:
            self.cache = self.denoiser.select(self.cache, self.rows_of(live, x.device))
        self.members = list(live)
        if start > self.covered and live:
            rows = torch.tensor(live, dtype=torch.int64, device=x.device)
            self.cache = self.denoiser.encode(x[rows, self.covered : start], self.covered, self.cache)
            self.calls += 1
            self.tokens += len(live) * (start - self.covered)
            self.covered = start

    def view(self, rows: list[int], span: tuple[int, int], device: torch.device) -> "CachedBlock":
        """The engine's model for block ``span`` run on the samples ``rows`` (members)."""
        return CachedBlock(self.denoiser, self.cache, self.rows_of(rows, device), *span)

    def rows_of(self, samples: list[int], device: torch.device) -> Tensor:
        """The cache's rows (int64) of ``samples``, members of it."""
        where = {b: i for i, b in enumerate(self.members)}
        return torch.tensor([where[b] for b in samples], dtype=torch.int64, device=device)


class CachedBlock:
    """``den(x [R, e], t, positions=None, *, samples)`` for the engine: the block ``[start, end)`` of
    ``x`` through ``denoiser``'s cached call (module docstring). ``cache_rows[i]``: the cache's row of
    the engine input's sample ``i``."""

    supports_positions = True
    takes_samples = True

    def __init__(self, denoiser, cache, cache_rows: Tensor, start: int, end: int):
        self.denoiser, self.cache, self.cache_rows = denoiser, cache, cache_rows
        self.start, self.end = start, end

    def __call__(self, x: Tensor, t: Tensor, positions: Tensor | None = None, *, samples: Tensor) -> Tensor:
        R, e = x.shape
        n = self.end - self.start
        block = x[:, self.start : self.end]
        kwargs = dict(cache=self.cache, samples=self.cache_rows[samples], start=self.start)
        if positions is not None:
            r, l = positions // e, positions % e
            inside = torch.where(l >= self.start, r * n + (l - self.start), 0)  # padded slots ask for index 0
            return self.denoiser(block, t, positions=inside, **kwargs)
        out = self.denoiser(block, t, **kwargs)
        return torch.cat([out.new_zeros(R, self.start, out.shape[-1]), out], 1)
