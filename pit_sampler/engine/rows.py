"""Which logits rows a round needs, and where the sweep finds them.

A round evaluates the ``W`` window slices of all ``B`` samples in one denoiser call on the states
``window[:W]`` flattened to ``x [W * B, L]`` (slice ``w`` of sample ``b`` is row ``w * B + b``),
then runs one sweep over ``n`` slices: the ``W`` window slices and, when ``W > 1``, ``W`` more
*extension* slices (the next planned steps, guesses for the slots the window slides into) that
reuse the logits of the sample's last window slice. Slice ``u`` therefore reads denoiser row
``min(u, W - 1) * B + b``.

The sweep takes packed logits ``[M, V]`` and a map ``rows [n, B, L]`` (the packed row each
(slice, position) reads; ``-1``: none). Three ways to fill them:

* :func:`full_rows`: the plain call ``denoiser(x, t) -> [W * B, L, V]`` viewed as ``[W * B * L, V]``;
  every (slice, position) maps to its own row.
* :func:`mean_rows` (positions protocol, mean parametrization): the plan says which positions each
  slice unmasks (``rank``), so only those rows are requested: ``M`` bounded by
  :func:`pit_sampler.engine.plan.reach_bound`, about ``n`` rows per sample instead of ``W L``.
* :func:`score_rows` (positions protocol, score parametrization): the jump rate needs the
  log-sum-exp of every position that may still be masked at the slice, i.e. every position masked in
  the window's exact first state ``x0`` (absorbing: the scan only unmasks), for each window slice;
  extension slices share their last window slice's rows.

Padding entries of the request repeat flat index 0 (allowed by the protocol); requests that would
not fit the static budget ``M`` get no row, which the sweep reports as a missing row (``invalid = -1``,
an internal error if the slice is accepted), never as a wrong token.
"""

from __future__ import annotations

import torch
from torch import Tensor


def full_rows(n: int, W: int, B: int, L: int, device, owned: tuple[int, int] | None = None) -> Tensor:
    """int64 ``[n, B, L]``: ``(min(u, W - 1) * B + b) * L + l``, for logits ``[W * B, L, V]`` viewed flat.
    ``owned = (lo, hi)``: only slices ``lo <= u < hi`` have rows, from a call on ``window[lo:]``
    (logits ``[(min(hi, W) - lo) * B, L, V]``); the others get ``-1``."""
    lo, hi = owned or (0, n)
    u = torch.arange(n, device=device).view(n, 1, 1)
    b = torch.arange(B, device=device).view(1, B, 1)
    rows = ((u.clamp(max=W - 1) - lo) * B + b) * L + torch.arange(L, device=device)
    return torch.where((u >= lo) & (u < hi), rows, -1).expand(n, B, L)


def _pack(keep: Tensor, budget: int) -> tuple[Tensor, Tensor]:
    """``(dest, fits)`` for the flattened boolean ``keep``: each kept entry's slot in a packed list
    (in order), and whether that slot is below ``budget``."""
    dest = keep.cumsum(0) - 1
    return dest, keep & (dest < budget)


def _scatter(size: int, where: Tensor, index: Tensor, values: Tensor, fill: int) -> Tensor:
    """A ``[size]`` tensor filled with ``fill``, holding ``values`` at ``index`` where ``where``
    (other entries go to a spare slot that is dropped: static shapes, no host read)."""
    out = torch.full((size + 1,), fill, dtype=torch.int64, device=index.device)
    out.scatter_(0, torch.where(where, index, size), torch.where(where, values, fill))
    return out[:size]


def mean_rows(rank: Tensor, pos: Tensor, n: int, W: int, budget: int,
              owned: tuple[int, int] | None = None) -> tuple[Tensor, Tensor]:
    """``(index [budget], rows [n, B, L])`` for the positions drawn by sweep slices ``0..n-1``:
    position ``l`` of sample ``b`` is drawn by slice ``u = rank[b, l] - pos[b]`` when ``0 <= u < n``,
    evaluated at denoiser row ``min(u, W - 1) * B + b``. ``owned = (lo, hi)``: only the draws of
    slices ``lo <= u < hi``, from a call on ``window[lo:]`` (row ``(min(u, W - 1) - lo) * B + b``)."""
    B, L = rank.shape
    device = rank.device
    lo, hi = owned or (0, n)
    u = rank - pos.unsqueeze(1)
    drawn = ((rank >= 0) & (u >= lo) & (u < hi)).reshape(-1)
    dest, fits = _pack(drawn, budget)
    u = u.clamp(0, n - 1)
    b = torch.arange(B, device=device).unsqueeze(1)
    l = torch.arange(L, device=device)
    source = (((u.clamp(max=W - 1) - lo).clamp(min=0) * B + b) * L + l).reshape(-1)
    index = _scatter(budget, fits, dest, source, 0)
    target = ((u * B + b) * L + l).reshape(-1)
    rows = _scatter(n * B * L, fits, target, dest, -1).view(n, B, L)
    return index, rows


def score_rows(masked: Tensor, n: int, W: int, per_slice: int) -> tuple[Tensor, Tensor]:
    """``(index [W * per_slice], rows [n, B, L])``: for each window slice ``w``, the positions
    ``masked [B, L]`` (masked in the window's first state) of every sample, packed in ``per_slice``
    rows; extension slices read their last window slice's rows."""
    B, L = masked.shape
    device = masked.device
    dest, fits = _pack(masked.reshape(-1), per_slice)
    flat = torch.arange(B * L, device=device)
    columns = _scatter(per_slice, fits, dest, flat, 0)  # flat offsets b * L + l, padded with 0
    w = torch.arange(W, device=device).unsqueeze(1)
    index = (w * (B * L) + columns).reshape(-1)
    slot = torch.where(fits, dest, -1).view(1, B, L)
    u = torch.arange(n, device=device).clamp(max=W - 1).view(n, 1, 1)
    rows = torch.where(slot >= 0, u * per_slice + slot, -1)
    return index, rows
