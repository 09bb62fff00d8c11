"""Sampling across processes with ``torch.distributed`` (NCCL on GPUs, gloo on CPUs, ``torchrun``).

Three ways to use several ranks; all rely on one fact of the noise contract: every random number is
a fixed function of (seed, step, position, token), and the unmask table does not depend on the model.

1. **Batch parallel** (:func:`sample_batch`): every rank passes the same global batch and seed;
   rank ``r`` samples its contiguous share of the samples, each with the per-sample seed of its
   *global* index (``sample_seeds(seed, B)[i]``, or the caller's seed tensor), so the union over
   ranks is the one-process result bit for bit. ``gather=True`` all-gathers the tokens (every rank
   gets the whole batch).
2. **Tensor-parallel models**: every rank runs the *same* sampler, inputs and seed over a model that
   is split across ranks (the model does its own collectives). The sampler needs no communication:
   its draws depend only on the logits and the noise, so ranks that see the same logits draw the
   same tokens. Nothing to call here beyond :func:`check_same` at the start (tests/test_distributed.py
   runs a vocab-parallel head on two ranks).
3. **Window parallel** (:class:`WindowParallelPIT`): one sample, or a batch, comes back sooner. Each
   rank holds a model replica and evaluates a contiguous share of the window's slices (the last rank
   also draws the extension guesses, which reuse the last slice's logits). With the mean
   parametrization the plan says, before the call, which positions each slice draws; a rank runs the
   sweep on its own slices' logits only and the ranks exchange the *tokens* they drew (int32, packed
   in the plan's order: 4 bytes per drawn token, plus the slices' invalid-row counts, int32 ``[2W, B]``)
   in one all-reduce. Every rank then rebuilds the same window states, residuals and acceptance, so
   the result is the one-process PIT's, round for round, and with ``tol = 0`` the sequential sample.
   Logits never cross ranks (splitting the window naively would move ``rows x V`` floats).

Failure handling: every entry point first checks that the ranks agree on their configuration
(:func:`check_same`: seed, window, steps, shapes, vocabulary) and raises on every rank if not. A
rank that raises while sampling reports it in the next exchange, and every rank then raises a
``RuntimeError`` naming the rank, the round and the error; a collective that fails or times out
(the process group's ``timeout``, see :func:`init`) raises the same way, never hangs.
"""

from __future__ import annotations

import dataclasses
import datetime
import os

import torch
import torch.distributed as dist
from torch import Tensor

from .engine import rows as rowmaps
from .engine.round import Round
from .engine.rows import _pack
from .noise import sample_seeds
from .samplers import PITSampler, SampleResult, checked_x_init
from .validation import check_int


def init(backend: str | None = None, timeout_s: float = 120.0) -> None:
    """``torch.distributed.init_process_group`` from ``torchrun``'s environment, with a bounded
    ``timeout`` (a collective that waits longer raises instead of hanging). ``backend``: ``"nccl"``
    when CUDA is available, else ``"gloo"``. On CUDA each rank uses device ``LOCAL_RANK``."""
    if dist.is_initialized():
        return
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))


def _group_size(group) -> tuple[int, int]:
    if not dist.is_initialized():
        raise RuntimeError("torch.distributed is not initialised: call pit_sampler.distributed.init() first")
    return dist.get_rank(group), dist.get_world_size(group)


def check_same(group=None, **values) -> None:
    """Raise ``ValueError`` on every rank unless every rank passed the same ``values`` (e.g. seed,
    window, num_steps, vocab_size, shapes): a mismatch would make ranks sample different chains."""
    rank, size = _group_size(group)
    everyone = [None] * size
    dist.all_gather_object(everyone, values, group=group)
    for key in values:
        seen = [v.get(key) for v in everyone]
        if any(v != seen[0] for v in seen):
            raise ValueError(f"ranks disagree on {key}: " + ", ".join(f"rank {r}: {v!r}" for r, v in enumerate(seen)))


def _describe(value):
    """A comparable summary of a config value (tensors by shape, dtype and a checksum)."""
    if isinstance(value, Tensor):
        return (tuple(value.shape), str(value.dtype), int(value.to(torch.int64).sum()) if not value.is_floating_point()
                else float(value.double().sum()))
    return value


def _exchange_status(group, failed: BaseException | None, round_: int, device) -> None:
    """All-gather ``(failed, round)``; raise on every rank if any rank failed (naming it)."""
    rank, size = _group_size(group)
    mine = torch.tensor([int(failed is not None), round_], dtype=torch.int64, device=device)
    everyone = [torch.empty_like(mine) for _ in range(size)]
    try:
        dist.all_gather(everyone, mine, group=group)
    except Exception as err:  # a timeout or a lost peer
        raise RuntimeError(f"rank {rank}: a collective failed after round {round_} ({err})") from err
    bad = [(r, int(t[1])) for r, t in enumerate(everyone) if int(t[0])]
    if failed is not None:
        raise RuntimeError(f"rank {rank} failed in round {round_}: {failed}") from failed
    if bad:
        r, k = bad[0]
        raise RuntimeError(f"rank {r} failed in round {k}; rank {rank} stops too")


def shard(batch: int, rank: int, size: int) -> slice:
    """The contiguous share of ``batch`` samples that ``rank`` of ``size`` samples (sizes differ by at most one).
    ``batch`` must be an int >= 0, ``size`` an int >= 1 and ``rank`` an int in ``[0, size)``."""
    batch, size = check_int("batch", batch, lo=0), check_int("size", size, lo=1)
    rank = check_int("rank", rank, lo=0, hi=size)
    base, extra = divmod(batch, size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def sample_batch(sampler, x_init: Tensor, seed: int | Tensor = 0, *, group=None, gather: bool = True):
    """Batch parallel: ``(tokens, local)``. Every rank passes the same global ``x_init [B, L]`` and
    ``seed``; this rank samples ``x_init[shard(B, rank, size)]`` with the global per-sample seeds.
    ``tokens``: the whole batch's tokens on every rank (``gather=True``), else this rank's share;
    ``local``: this rank's :class:`~pit_sampler.SampleResult` (``None`` when the batch is smaller
    than the group and this rank has no share)."""
    rank, size = _group_size(group)
    B = x_init.shape[0]
    seeds = sample_seeds(seed, B, x_init.device)
    check_same(group, batch=tuple(x_init.shape), seeds=_describe(seeds), x_init=_describe(x_init),
               window=getattr(sampler, "window", 1), config=repr(getattr(sampler, "config", None)))
    part = shard(B, rank, size)
    failed, local = None, None
    if part.stop > part.start:  # a batch smaller than the group leaves some ranks idle (local is None)
        try:
            local = sampler.sample(x_init[part], seed=seeds[part])
        except Exception as err:  # reported to every rank below
            failed = err
    _exchange_status(group, failed, getattr(sampler, "rounds_done", 0), x_init.device)
    mine = local.tokens if local is not None else x_init[:0].to(torch.int64)
    if not gather:
        return mine, local
    width = shard(B, 0, size).stop  # the largest share
    padded = torch.full((width, x_init.shape[1]), -1, dtype=torch.int64, device=x_init.device)
    padded[: mine.shape[0]] = mine
    everyone = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(everyone, padded, group=group)
    tokens = torch.cat([t[: shard(B, r, size).stop - shard(B, r, size).start] for r, t in enumerate(everyone)])
    return tokens, local


class WindowParallelPIT(PITSampler):
    """:class:`~pit_sampler.PITSampler` whose window is split over the ranks of ``group`` (module
    docstring, mode 3). Every rank constructs it with the same arguments and calls ``sample`` with
    the same ``x_init`` and ``seed``; every rank returns the same tokens, equal to the one-process
    PIT's (and, with ``tol = 0``, to the sequential sampler's). Needs the mean parametrization and an
    int ``window`` (every rank must run the same windows); ``compile``/``cuda_graph`` are not
    supported (the round holds a collective).

    ``SampleResult.exchanged_bytes``: bytes this rank contributed to the exchange per round (the
    all-reduce's payload). After ``sample``: ``drawn_per_round``, the tokens the window's slices drew
    per round (window and extension, all samples), and ``logits_bytes``, what exchanging their float32
    logits rows instead would move per round (``drawn x V x 4``)."""

    def __init__(self, denoiser, *, group=None, **kwargs):
        self.group = group
        super().__init__(denoiser, **kwargs)
        c = self.config
        if c.score or c.solver != "euler":
            raise ValueError("window parallelism needs the mean parametrization and the first-order solver (the "
                             "plan must say who draws what)")
        if c.window == "auto":
            raise ValueError("window parallelism needs an int window (every rank must run the same windows)")
        if c.compile is not False or c.cuda_graph:
            raise ValueError("window parallelism does not support compile or cuda_graph (the round holds a collective)")
        if self.blocks is not None:
            raise ValueError("window parallelism does not support block sampling yet (block_length, or a block-causal "
                             "denoiser's own): it samples the whole sequence")
        self.engine.rule = dataclasses.replace(self.engine.rule, packing="draws")  # the plan says who draws what
        self.logits_bytes = 0.0
        self.drawn_per_round = 0.0

    def round_type(self, call, acceptance, tally):
        return WindowParallelRound(call, acceptance, tally, self.group, lambda: self.engine.rounds_done)

    def sample(self, x_init: Tensor, seed: int | Tensor = 0) -> SampleResult:
        x = checked_x_init(x_init, self.config)
        c = self.config
        check_same(self.group, shape=tuple(x.shape), x_init=_describe(x),
                   seeds=_describe(sample_seeds(seed, x.shape[0], x.device)), window=c.window, tol=c.tol, mode=c.mode,
                   config=repr(c))
        r = self.engine.round
        r.payload, r.drawn = [], []
        result = self.engine.sample(x, sample_seeds(seed, x.shape[0], x.device))
        rounds = max(1, len(r.payload))
        result.exchanged_bytes = sum(r.payload) / rounds
        self.drawn_per_round = float(torch.stack(r.drawn).sum()) / rounds if r.drawn else 0.0  # one read
        self.logits_bytes = self.drawn_per_round * (r.vocab or 0) * 4
        return result


class WindowParallelRound(Round):
    """A round whose window slices are split over the ranks of ``group`` (module docstring, mode 3);
    ``rounds_done()`` names the round of a failure."""

    def __init__(self, call, acceptance, tally, group, rounds_done):
        super().__init__(call, acceptance, tally)
        self.group, self.rounds_done = group, rounds_done
        self.payload: list[int] = []
        self.drawn: list[Tensor] = []
        self.vocab: int | None = None

    def owned(self, W: int, n: int) -> tuple[int, int, int]:
        """``(lo, hi, top)``: this rank's window slices ``lo <= u < hi``; it draws slices ``lo <= u < top``
        (the last rank also the extension slices ``W <= u < n``)."""
        rank, size = _group_size(self.group)
        lo, hi = rank * W // size, (rank + 1) * W // size
        return lo, hi, n if rank == size - 1 else hi

    def cost(self, W: int, B: int, L: int, budget: int, rule) -> tuple[int, int]:
        lo, hi, _ = self.owned(W, rule.span(W))
        return (hi - lo) * B, budget if self.call.positions else (hi - lo) * B * L

    def evaluate(self, window, pos, steps, seeds, rule, plan, budget, carry=None, samples=None):
        """This rank's slices through the denoiser and the sweep; the drawn tokens all-reduced; the
        window's states, residuals and invalid counts rebuilt from them (the same on every rank)."""
        W = window.shape[0] - 1
        _, B, L = window.shape
        n = steps.shape[0]
        u = plan.rank - pos.unsqueeze(1)  # the slice that draws each position
        drawn = (plan.rank >= 0) & (u >= 0) & (u < n)
        dest, fits = _pack(drawn.reshape(-1), budget)
        failed = None
        try:
            tokens, invalid = self._own_draws(window, pos, steps, seeds, samples, rule, plan, budget, u, drawn, dest,
                                              fits)
        except Exception as err:  # reported to every rank through the exchange
            failed = err
            tokens = torch.zeros(budget, dtype=torch.int32, device=window.device)
            invalid = torch.zeros(n, B, dtype=torch.int32, device=window.device)
        payload = self._exchange(tokens, invalid, failed)
        self.drawn.append(drawn.sum())  # on the device: read once, after the run
        tokens, invalid = payload[:budget].to(torch.int64), payload[budget : budget + n * B].view(n, B)
        drawn_token = torch.where(fits, tokens[dest.clamp(0, budget - 1)], rule.spec.mask_id).view(B, L)
        slices = torch.arange(n, device=u.device).view(n, 1, 1)
        states = torch.where(drawn & (u <= slices), drawn_token, window[0])
        residual = (states[:W] != window[1:]).sum(-1, dtype=torch.int32)
        return states, residual, invalid, self.vocab, None

    def _exchange(self, tokens: Tensor, invalid: Tensor, failed: Exception | None) -> Tensor:
        """The all-reduce of every rank's drawn tokens, invalid counts and failure bit; raises on every
        rank when one failed (one host read per round: the price of naming the failed rank at once)."""
        me, size = _group_size(self.group)
        status = torch.zeros(1, dtype=torch.int32, device=tokens.device)
        status[0] = (1 << min(me, 30)) if failed is not None else 0
        payload = torch.cat([tokens, invalid.reshape(-1).to(torch.int32), status])
        try:
            dist.all_reduce(payload, group=self.group)
        except Exception as err:  # a timeout or a lost peer
            raise RuntimeError(f"rank {me}: the token exchange of round {self.rounds_done()} failed ({err})") from err
        if failed is not None:
            raise RuntimeError(f"rank {me} failed in round {self.rounds_done()}: {failed!r}") from failed
        flags = int(payload[-1])
        if flags:
            bad = [r for r in range(min(size, 31)) if flags >> r & 1]
            raise RuntimeError(f"rank {bad[0]} failed in round {self.rounds_done()}; rank {me} stops too")
        self.payload.append(payload.numel() * payload.element_size())
        return payload

    def _own_draws(self, window, pos, steps, seeds, samples, rule, plan, budget, u, drawn, dest, fits):
        """``(tokens [budget] int32, invalid [n, B])``: the tokens this rank's slices draw, at their
        slots of the window's packed draw list (0 elsewhere), and its slices' invalid counts (0 for
        the other slices). Its sweep starts from ``window[0]`` with the positions that earlier
        (other ranks') slices draw filled in by a placeholder, so that nothing else is drawn."""
        W = window.shape[0] - 1
        _, B, L = window.shape
        n = steps.shape[0]
        lo, hi, top = self.owned(W, n)
        mask_id = rule.spec.mask_id
        tokens = torch.zeros(budget + 1, dtype=torch.int32, device=window.device)
        invalid = torch.zeros(n, B, dtype=torch.int32, device=window.device)
        if hi == lo:  # more ranks than window slices: this rank draws nothing this round
            return tokens[:budget], invalid
        xs = window[lo:hi].reshape((hi - lo) * B, L)
        ts = rule.times[steps[lo:hi].clamp(min=0)].reshape(-1)
        index, rows = rowmaps.mean_rows(plan.rank, pos, n, W, budget, owned=(lo, top))
        logits = rule.prepare(self.call(xs, ts, index, samples))
        self.vocab = logits.shape[-1]
        placeholder = 1 if mask_id == 0 else 0
        start = torch.where(drawn & (u < lo), placeholder, window[0])
        states, _, _, sweep_invalid = rule.spec(logits, rows, steps, start, window[1:], seeds)
        slices = torch.arange(n, device=u.device).unsqueeze(1)
        invalid = torch.where((slices >= lo) & (slices < top), sweep_invalid, 0)
        mine = (drawn & (u >= lo) & (u < top)).reshape(-1) & fits
        got = states.gather(0, u.clamp(0, n - 1).unsqueeze(0))[0].reshape(-1)  # each position after its slice
        tokens.scatter_(0, torch.where(mine, dest, budget), torch.where(mine, got, 0).to(torch.int32))
        return tokens[:budget], invalid
