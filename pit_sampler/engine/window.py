"""The window state of the samples still running, and how it moves.

Sample ``b``'s window is ``window[:, b]`` (``[W + 1, L]`` each): ``window[0]`` is its exact state
(planned steps ``0 .. pos[b] - 1`` done), ``window[1 + w]`` the current guess of the state after slice
``w``. A round recomputes the guesses (:mod:`pit_sampler.engine.round`), then :func:`slide` moves each
sample past the slices it accepted. Between rounds the host may shrink the batch (finished samples
leave: :meth:`Batch.select`) and resize the window (:meth:`Batch.resize`) at poll points, where it
reads, in one transfer, what it needs to decide (:meth:`Batch.read`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .plan import Plan, reach_bound


def slide(x0: Tensor, states: Tensor, accept: Tensor, W: int) -> Tensor:
    """The next window ``[W + 1, B, L]``: sample ``b`` moves ``accept[b]`` slices on in the sequence
    ``x0, states[0], states[1], ...`` (its exact first state, the window slices, then any extension
    guesses); past the end, the last state repeats (any guess keeps the result exact)."""
    full = torch.cat([x0.unsqueeze(0), states])
    k = (accept.unsqueeze(0) + torch.arange(W + 1, device=x0.device).unsqueeze(1)).clamp(max=full.shape[0] - 1)
    return full.gather(0, k.unsqueeze(-1).expand(W + 1, *x0.shape))


def acceptance_tally(accept: Tensor, left: Tensor, top: int) -> Tensor:
    """int64 ``[n, 4]`` for ``v = 1, 2, 4, .., top`` (``n`` windows): over the samples with at least
    ``v`` steps left before the round, the sums of ``min(k, v)`` and ``min(k, max(1, v / 2))``, their
    number, and how many accepted all ``v`` slices with steps to spare (``k >= v`` and ``left > v``).
    ``k = accept``. What ``window="auto"`` learns from each round, on the device (no host read)."""
    v = 2 ** torch.arange(top.bit_length(), device=accept.device).unsqueeze(1)  # [n, 1]
    eligible = left.unsqueeze(0) >= v
    k = accept.unsqueeze(0)
    longer = torch.where(eligible, k.minimum(v), 0).sum(1)
    shorter = torch.where(eligible, k.minimum((v // 2).clamp(min=1)), 0).sum(1)
    full = (eligible & (k >= v) & (left.unsqueeze(0) > v)).sum(1)
    return torch.stack([longer, shorter, eligible.sum(1), full], 1)


@dataclass
class Batch:
    """The samples still running and their device state: ``slots`` (host list: each row's index in
    the caller's batch), ``window [W + 1, B, L]``, ``pos`` (planned steps done), ``iters`` (iterations
    on the current block), ``err`` (:func:`~pit_sampler.engine.accept.record_errors`), ``seeds``,
    ``samples`` (device int64 ``[B]``: each row's index in the engine's input, for denoisers that take
    it: :mod:`pit_sampler.engine.call`), ``plan``, ``bounds`` (window span -> ``(draws, reach)``: :meth:`Plan.window_draws` and the slots a
    window may start at until the next poll, :func:`~pit_sampler.engine.plan.reach_bound`) and
    ``tallies`` (each round's :func:`acceptance_tally` since the last poll, with ``window="auto"``) and
    ``carry`` (what the step rule carries from each sample's last exact slice, or ``None``)."""

    slots: list[int]
    window: Tensor
    pos: Tensor
    iters: Tensor
    err: Tensor
    seeds: Tensor
    samples: Tensor
    plan: Plan
    bounds: dict[int, tuple[Tensor, int | None]]
    tallies: list[Tensor] = field(default_factory=list)
    carry: Tensor | None = None

    @classmethod
    def start(cls, x: Tensor, seeds: Tensor, plan: Plan, bounds: dict, first: int = 0) -> "Batch":
        """Every sample at its first step, its window holding ``x`` twice (``W = 1``); ``x``'s rows are
        the engine input's rows ``first, first + 1, ...``."""
        B, L = x.shape
        zeros = torch.zeros(B, dtype=torch.int64, device=x.device)
        return cls(list(range(B)), x.unsqueeze(0).expand(2, B, L).clone(), zeros, zeros.clone(),
                   torch.full_like(zeros, -1), seeds, torch.arange(first, first + B, device=x.device), plan, bounds)

    def select(self, keep: list[int]) -> "Batch":
        """The samples ``keep`` (indices into this batch, in order)."""
        index = torch.tensor(keep, dtype=torch.int64, device=self.pos.device)
        return Batch([self.slots[i] for i in keep], self.window[:, index], self.pos[index], self.iters[index],
                     self.err[index], self.seeds[index], self.samples[index], self.plan.select(index),
                     {span: (b[index], reach) for span, (b, reach) in self.bounds.items()},
                     carry=None if self.carry is None else self.carry[index])

    def resize(self, W: int) -> None:
        """Cut the window to ``W + 1`` slots, or pad it with its last state."""
        extra = W + 1 - self.window.shape[0]
        if extra <= 0:
            self.window = self.window[: W + 1].clone()  # not a view: a compiled round guards on views
        else:
            self.window = torch.cat([self.window, self.window[-1:].expand(extra, *self.window.shape[1:])])

    def read(self, mask_id: int) -> dict:
        """One device-to-host transfer: per sample, steps left, the error code, positions still masked,
        and for each span the most positions a window of that span can draw until the next poll; the
        rounds' acceptance tallies since the last poll (``"tallies"``: one ``[n, 4]`` list per round)."""
        rows = [self.plan.total - self.pos, self.err, (self.window[0] == mask_id).sum(1)]
        rows += [reach_bound(b, self.pos, reach) for b, reach in self.bounds.values()]
        flat = torch.cat([torch.stack(rows).reshape(-1)] + [t.reshape(-1) for t in self.tallies]).tolist()
        B = len(self.slots)
        values = [flat[i * B : (i + 1) * B] for i in range(len(rows))]
        out = dict(zip(("remaining", "err", "masked"), values[:3]))
        out.update({f"draws{span}": v for span, v in zip(self.bounds, values[3:])})
        rest, out["tallies"] = flat[len(rows) * B :], []
        for t in self.tallies:
            n = t.shape[0]
            out["tallies"].append([rest[4 * i : 4 * i + 4] for i in range(n)])
            rest = rest[4 * n :]
        self.tallies = []
        return out
