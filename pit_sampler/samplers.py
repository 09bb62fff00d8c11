"""Samplers for absorbing (masked) diffusion: sequential tau-leaping and parallel-in-time Picard.

Both run the same loop, built from small pieces (all sampling math lives in :mod:`pit_sampler.ops`):

* :mod:`pit_sampler.plan`: each sample's *plan*, the ordered steps it must perform (with
  skip-inactive only the steps at which one of its positions unmasks, read off the noise), and which
  positions each planned step draws;
* a *round* (:meth:`_Sampler.round`): one batched denoiser call on the window's ``W`` states of every
  sample, one fused sweep over the window and its extension guesses (:mod:`pit_sampler.rows` says
  which logits rows it reads), acceptance, and the slide (:func:`slide`). Every tensor has the same
  shape round after round and nothing is read back to the host, so a round compiles whole
  (``compile=True``) and replays as one CUDA graph (``cuda_graph=True``);
* *poll points* (:class:`_Batch`): at most once every ``sync_every`` rounds the host reads, in one
  transfer, how many steps each sample has left (and the first invalid row of an accepted slice, if
  any), lets finished samples leave the batch, and sets the next rounds' window and logits budget.

``TauLeapingSampler`` is ``W = 1``: every round advances every unfinished sample by exactly one
step, so its number of rounds is known from the plan and it never polls. ``PITSampler`` (exact mode)
slides each sample's window by ``c = 1 +`` the number of leading slices whose state did not change
since the previous iterate (those slices saw exact inputs, so the first ``c`` new states are exact),
refilling the new slots with the extension guesses. With ``tol = 0`` the tokens equal the sequential
sampler's, bit for bit, for a batch-invariant denoiser. ``tol > 0`` accepts slices whose changed
fraction is at most ``tol``; ``mode="fixed"`` runs blocks of ``W`` steps with exactly ``max_iters``
iterations each (the paper's block form). Both are approximate and say so in ``SampleResult.exact``.

Host reads of device data during ``sample()`` (``aten._local_scalar_dense``, ``nonzero``, device to
host copies): sequential, at most ``C_HOST_READS``; PIT, at most ``ceil(rounds / sync_every) +
C_HOST_READS``. The fixed reads are 4 with the native or Triton backend: the input checks 1, the
vocabulary probe 1, the first poll 1, the end 1 (the plan has a static width and needs none); the
bound leaves room for backends and models that read a little.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from . import ops, rows as rowmaps
from .noise import sample_seeds
from .plan import Plan, make_plan, reach_bound
from .rules import step_tables
from .schedules import get_schedule, time_grid
from .adapters import resolve_sampler_kwargs
from .config import TauLeapingConfig
from .truncation import truncate_logits
from .validation import check_token_batch, is_int, is_real
from .graphs import GraphedRound
from .window import WindowPolicy

Denoiser = Callable[..., Tensor]
C_HOST_READS = 8


@dataclass
class SampleResult:
    """``tokens [B, L]`` (no mask left); ``rounds``: sequential denoiser calls; ``nfe``: denoiser rows
    evaluated per sample (total compute / B); ``iterations``: sweeps run; ``residuals``: per iteration,
    int32 ``[W]`` positions changed per slice, summed over the batch; ``exact``: whether the result is
    the exact sequential sample; ``windows``: the window of each round; ``policy``: with
    ``window="auto"``, the measured cost model that chose them
    (:meth:`pit_sampler.window.WindowPolicy.report`); ``logits_rows``: logits rows materialised per
    round on average (``W B L`` for a plain denoiser, about the rows drawn with the positions
    protocol); ``polls``: poll points after the first (module docstring); ``exchanged_bytes``: bytes
    this process sent per round to other ranks (:mod:`pit_sampler.distributed`; 0 in one process)."""

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


def _pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def slide(x0: Tensor, states: Tensor, accept: Tensor, W: int) -> Tensor:
    """The next window ``[W + 1, B, L]``: sample ``b`` moves ``accept[b]`` slices on in the sequence
    ``x0, states[0], states[1], ...`` (its exact first state, the window slices, then the extension
    guesses); past the end, the last state repeats (any guess keeps the result exact)."""
    full = torch.cat([x0.unsqueeze(0), states])
    k = (accept.unsqueeze(0) + torch.arange(W + 1, device=x0.device).unsqueeze(1)).clamp(max=full.shape[0] - 1)
    return full.gather(0, k.unsqueeze(-1).expand(W + 1, *x0.shape))


def record_errors(err: Tensor, invalid: Tensor, accepted: Tensor, steps: Tensor) -> Tensor:
    """``err [B]``: ``-1``, or ``2 j + kind`` for the first accepted slice (step ``j``) that read an
    invalid row (``kind = 0``) or that the sweep flagged (a bad step or a missing row, ``kind = 1``: an
    internal error). Discarded slices ran on guesses the sequential chain may never visit, and may
    read anything."""
    bad = (invalid != 0) & accepted
    first = bad.to(torch.int8).argmax(0, keepdim=True)
    code = 2 * steps.gather(0, first)[0] + (invalid.gather(0, first)[0] < 0).to(torch.int64)
    return torch.where((err < 0) & bad.any(0), code, err)


@dataclass
class _Batch:
    """The samples still running and their device state: ``slots`` (host list: each row's index in
    the caller's batch), ``window [W + 1, B, L]`` (``window[0]`` exact), ``pos`` (planned steps done),
    ``iters`` (iterations on the current block), ``err`` (:func:`record_errors`), ``seeds``, ``plan``
    and ``bounds`` (window span -> ``(draws, reach)``: :meth:`Plan.window_draws` and the slots a window
    may start at until the next poll, :func:`~pit_sampler.plan.reach_bound`)."""

    slots: list[int]
    window: Tensor
    pos: Tensor
    iters: Tensor
    err: Tensor
    seeds: Tensor
    plan: Plan
    bounds: dict[int, tuple[Tensor, int | None]]

    def select(self, keep: list[int]) -> "_Batch":
        index = torch.tensor(keep, device=self.pos.device)
        return _Batch([self.slots[i] for i in keep], self.window[:, index], self.pos[index], self.iters[index],
                      self.err[index], self.seeds[index], self.plan.select(index),
                      {span: (b[index], reach) for span, (b, reach) in self.bounds.items()})

    def resize(self, W: int) -> None:
        """Cut the window to ``W + 1`` slots, or pad it with its last state."""
        extra = W + 1 - self.window.shape[0]
        if extra <= 0:
            self.window = self.window[: W + 1].clone()  # not a view: a compiled round guards on views
        else:
            self.window = torch.cat([self.window, self.window[-1:].expand(extra, *self.window.shape[1:])])

    def read(self, mask_id: int) -> dict[str, list[int]]:
        """One device-to-host transfer: per sample, steps left, the error code, positions still masked,
        and for each span the most positions a window of that span can draw until the next poll."""
        rows = [self.plan.total - self.pos, self.err, (self.window[0] == mask_id).sum(1)]
        rows += [reach_bound(b, self.pos, reach) for b, reach in self.bounds.values()]
        values = torch.stack(rows).tolist()
        out = dict(zip(("remaining", "err", "masked"), values[:3]))
        out.update({f"draws{span}": v for span, v in zip(self.bounds, values[3:])})
        return out


def _spans(W: int) -> int:
    """Slices of a round's sweep: the window and, when ``W > 1``, as many extension guesses."""
    return 2 * W if W > 1 else 1


class _Sampler:
    window = 1
    polls = False  # whether the number of rounds depends on the model (PIT) or is known from the plan

    def __init__(self, denoiser: Denoiser, config: TauLeapingConfig | None = None, **kwargs):
        """``config``: a :class:`~pit_sampler.config.TauLeapingConfig`; keyword arguments are its
        fields (they override ``config``'s); an adapter's settings fill in the rest (module
        :mod:`pit_sampler.config`)."""
        if not callable(denoiser):
            raise TypeError(f"denoiser must be callable, got {type(denoiser).__name__}")
        given = resolve_sampler_kwargs(denoiser, TauLeapingConfig.arguments(config, kwargs))
        if "mask_id" not in given or "num_steps" not in given:
            raise TypeError("a sampler needs mask_id and num_steps (mask_id may come from a denoiser adapter)")
        self.config = c = TauLeapingConfig(**given)
        self.denoiser = denoiser
        self.schedule = get_schedule(c.schedule)
        self.times = time_grid(c.num_steps, c.grid, c.t_max, c.t_min)
        self.tables = step_tables(self.schedule, self.times, c.rule)
        if c.score and not bool(torch.isfinite(self.tables.rate).all()):
            raise ValueError(
                f"schedule {self.schedule!r} has an infinite score rate at t_max={c.t_max} (needs alpha(t_max) > 0)"
            )
        self.spec = ops.SweepSpec(self.tables.cdf, self.tables.rate, c.mask_id, c.temperature, self.tables.rule,
                                  c.score, c.final == "argmax")
        self.positions = bool(getattr(denoiser, "supports_positions", False))
        self._tables_on: dict[torch.device, tuple[ops.SweepSpec, Tensor]] = {}
        self.compiled = c.compile is not False
        options = c.compile if isinstance(c.compile, dict) else {}
        fn = torch.compile(self.round, **{"fullgraph": True, **options}) if self.compiled else self.round
        self._round = GraphedRound(fn) if c.cuda_graph else fn

    # -- what each subclass decides -----------------------------------------------------------
    def _accept(self, residual: Tensor, live: Tensor, iters_here: Tensor, length: int) -> Tensor:
        """Slices each sample accepts this iteration (``[B]``), given ``residual [W, B]`` and ``live [W, B]``."""
        return live[0].to(torch.int64)

    exact = True

    def _window_policy(self, x: Tensor) -> WindowPolicy | None:
        """``None`` for a fixed window; with ``window="auto"``, the policy kept for these shapes."""
        return None

    # -- checks ---------------------------------------------------------------------------------
    def _check_x_init(self, x_init) -> None:
        check_token_batch("x_init", x_init, self.config.vocab_size)
        if self.config.cuda_graph and x_init.device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs CUDA tensors, got x_init on {x_init.device}")

    def _probe_vocab(self, x_init: Tensor, times: Tensor) -> tuple[int, int | None]:
        """``(top, V)``: the largest prompt token id, and the vocabulary size if it had to be learned.

        Without ``vocab_size``, a prompt (non-mask tokens) costs one all-mask denoiser row (counted in
        ``rounds`` and ``nfe``) to learn ``V``, so an out-of-range id is reported here rather than
        crashing inside the model. ``V`` is ``None`` when no probe was needed.
        """
        top = int(torch.where(x_init != self.config.mask_id, x_init, -1).max())
        if top < 0:
            return 0, None
        if self.config.vocab_size is not None:
            return top, None
        x = torch.full_like(x_init[:1], self.config.mask_id)
        if self.positions:
            probe = self.denoiser(x, times[:1], positions=torch.zeros(1, dtype=torch.int64, device=x.device))
            V = probe.shape[1] if isinstance(probe, Tensor) and probe.dim() == 2 else None
        else:
            probe = self.denoiser(x, times[:1])
            V = probe.shape[2] if isinstance(probe, Tensor) and probe.dim() == 3 else None
        if V is None:
            return top, None  # _check_logits reports it on the first real call
        if top >= V:
            raise ValueError(f"x_init holds token id {top}, out of range for the denoiser's vocab size V={V}")
        return top, V

    def _check_logits(self, logits, shape: tuple[int, ...], device, top_token: int, vocab: int | None) -> None:
        """Shape, dtype and vocab checks on the denoiser's output (static: fine inside a compiled round).
        ``shape``: what it must start with (``[R, L]``, or ``[M]`` with positions); ``vocab``: the
        vocabulary size this run's probe returned."""
        if not isinstance(logits, Tensor):
            raise TypeError(f"denoiser must return a torch.Tensor, got {type(logits).__name__}")
        if logits.dtype not in ops.LOGITS_DTYPES:
            raise TypeError(f"denoiser must return float logits (float64/32, bfloat16, float16), got {logits.dtype}")
        if not (logits.dim() == len(shape) + 1 and tuple(logits.shape[:-1]) == shape):
            want = ", ".join(map(str, shape))
            raise ValueError(f"denoiser returned logits of shape {tuple(logits.shape)}, expected [{want}, V]")
        V = logits.shape[-1]
        if not (self.config.vocab_size is None or V == self.config.vocab_size):
            raise ValueError(f"denoiser returned vocab size V={V}, but vocab_size={self.config.vocab_size}")
        if not (vocab is None or V == vocab):
            raise ValueError(f"denoiser returned vocab size V={V}, but it returned V={vocab} earlier in this run")
        if self.config.mask_id >= V:
            raise ValueError(f"mask_id={self.config.mask_id} is out of range for the denoiser's vocab size V={V}")
        if top_token >= V:
            raise ValueError(f"x_init holds token id {top_token}, out of range for the denoiser's vocab size V={V}")
        if logits.device != device:
            raise ValueError(f"denoiser returned logits on {logits.device}, expected {device}")

    # -- one round --------------------------------------------------------------------------------
    def round(self, window, pos, iters, err, plan_steps, total, rank, seeds, times, spec, budget: int,
              top_token: int = 0, vocab: int | None = None):
        """One Picard iteration of every sample, on device, with static shapes: the denoiser call on
        ``window[:W]`` (``[W + 1, B, L]``), one sweep over the window and its extension, acceptance
        and the slide. ``budget``: the packed logits rows of the positions protocol (unused for a
        plain denoiser). Returns ``(window, pos, iters, err, residual, V)``, ``residual`` int32 ``[W]``
        (positions changed per slice, summed over the batch), ``V`` the vocabulary size the denoiser
        returned (later rounds must return the same)."""
        W = window.shape[0] - 1
        L = window.shape[2]
        n = _spans(W)
        steps = Plan(plan_steps, total, rank).window_steps(pos, n)  # [n, B]
        live = steps[:W] >= 0
        states, residual, invalid, V = self._window_sweep(window, pos, steps, rank, seeds, times, spec, budget,
                                                          top_token, vocab)
        iters = iters + live[0]
        accept = self._accept(residual, live, iters, L)
        accepted = torch.arange(W, device=window.device).unsqueeze(1) < accept.unsqueeze(0)
        err = record_errors(err, invalid[:W], accepted, steps[:W])
        return slide(window[0], states, accept, W), pos + accept, torch.where(accept > 0, 0, iters), err, \
            residual.sum(1, dtype=torch.int32), V

    def _window_sweep(self, window, pos, steps, rank, seeds, times, spec, budget, top_token, vocab):
        """The denoiser call on ``window[:W]`` and the sweep over its ``n`` slices: ``(states [n, B, L],
        residual [W, B], invalid [n, B], V)``."""
        W = window.shape[0] - 1
        _, B, L = window.shape
        n = steps.shape[0]
        xs = window[:W].reshape(W * B, L)
        ts = times[steps[:W].clamp(min=0)].reshape(W * B)
        if not self.positions:
            logits = self.denoiser(xs, ts)
            shape = (W * B, L)
            rows = rowmaps.full_rows(n, W, B, L, xs.device)
        else:
            if self.config.score:
                index, rows = rowmaps.score_rows(window[0] == self.config.mask_id, n, W, budget)
            else:
                index, rows = rowmaps.mean_rows(rank, pos, n, W, budget)
            logits = self.denoiser(xs, ts, positions=index)
            shape = (index.shape[0],)
        logits = self._checked(logits, shape, xs.device, top_token, vocab)
        states, _, residual, invalid = spec(logits, rows, steps, window[0], window[1:], seeds)
        return states, residual, invalid, logits.shape[-1]

    def _checked(self, logits, shape, device, top_token, vocab) -> Tensor:
        """The denoiser's output checked (:meth:`_check_logits`), top-k/top-p truncated if asked, as
        packed float rows ``[M, V]``."""
        if isinstance(logits, Tensor) and logits.dtype == torch.float64:
            logits = logits.float()  # the kernels' precision; float64 models (e.g. exact oracles) are welcome
        self._check_logits(logits, shape, device, top_token, vocab)
        c = self.config
        if c.top_k is not None or c.top_p is not None:
            logits = truncate_logits(logits, c.top_k, c.top_p, c.temperature, c.mask_id)
        return logits.reshape(-1, logits.shape[-1])

    # -- the loop ---------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(self, x_init: Tensor, seed: int | Tensor = 0) -> SampleResult:
        """Fill every ``mask_id`` position of ``x_init`` (``[B, L]``; other positions are kept).

        ``seed``: an int in ``[-2**63, 2**64)`` (its 64 bits key the noise; per-sample seeds are derived
        from it and the slot) or an int64 tensor ``[B]`` of per-sample seeds. With ``max_rows`` below
        ``B``, the batch runs in groups of ``max_rows`` samples, one after the other (each sample's
        tokens are the same). Runs under ``torch.no_grad()``."""
        self._check_x_init(x_init)
        x_init = x_init.to(torch.int64)
        seeds = sample_seeds(seed, x_init.shape[0], x_init.device)
        self.rounds_done = 0  # host count of the rounds run so far (names the round of a failure)
        group = x_init.shape[0] if self.config.max_rows is None else self.config.max_rows
        parts = [self._run(x_init[i : i + group], seeds[i : i + group]) for i in range(0, x_init.shape[0], group)]
        return parts[0] if len(parts) == 1 else _concat(parts)

    def _window_cap(self, left: int, batch: int) -> int:
        """The largest window worth running (a power of two): no more slots than the most steps a
        sample has left (rounded up), and within ``max_rows`` rows per call."""
        cap = _pow2_at_least(max(1, left))
        if self.config.max_rows is not None:
            cap = min(cap, 1 << (max(1, self.config.max_rows // batch).bit_length() - 1))
        return cap

    def _windows(self, policy: WindowPolicy | None) -> list[int]:
        """Every window a run may use: the fixed one and the powers of two below it (the tail shrinks
        to them), or the auto policy's powers of two."""
        top = AUTO_MAX_WINDOW if policy is not None else self.window
        return sorted({top} | {1 << k for k in range(top.bit_length()) if (1 << k) <= top})

    def _budget(self, info: dict, keep: list[int], W: int) -> int:
        """Packed logits rows a round needs at most until the next poll (positions protocol), or the
        most tokens it draws (:attr:`_draws_known` without the protocol)."""
        if not (self.positions or self._draws_known):
            return 0
        if self.config.score:
            need = sum(info["masked"][i] for i in keep)
        else:
            need = sum(info[f"draws{_spans(W)}"][i] for i in keep)
        need = max(1, need)
        return _pow2_at_least(need) if self._buckets else need

    def _reach(self, span: int, device: torch.device) -> int | None:
        """The window starts the rounds until the next poll can have, from the poll's ``pos``: up to
        ``sync_every - 1`` rounds of at most ``W`` slots each. ``None`` (the rest of the run) for the
        sequential sampler, which reads its bounds once, and for compiled or graphed rounds (their
        budget must stay in a few buckets)."""
        if not self.polls or self._buckets:
            return None
        W = span // 2 if span > 1 else 1
        return (self.sync_interval(device) - 1) * W + 1

    @property
    def _draws_known(self) -> bool:
        """Whether the run plans which positions each step draws (``Plan.rank``) and bounds the draws
        of a window (the positions protocol's mean path needs both)."""
        return self.positions and not self.config.score

    def _call_rows(self, W: int, B: int) -> int:
        """Denoiser rows (states) one round evaluates: the window of every sample."""
        return W * B

    def _logits_rows(self, W: int, B: int, L: int, budget: int) -> int:
        """Logits rows one round materialises: every position of every row, or the packed request."""
        if not self.positions:
            return W * B * L
        return (W if self.config.score else 1) * budget

    @property
    def _buckets(self) -> bool:
        """Round shapes come in powers of two (batch, window tail, logits budget) when a compiled or
        captured round is reused: a bounded number of compilations per run."""
        return self.compiled or self.config.cuda_graph

    def _run(self, x_init: Tensor, seeds: Tensor) -> SampleResult:
        device, (B, L) = x_init.device, x_init.shape
        spec, times = self._device_tables(device)
        top_token, vocab = self._probe_vocab(x_init, times)
        plan = make_plan(x_init, seeds, self.tables.to(device), self.config.mask_id, self.config.num_steps,
                         skip_inactive=self.config.skips_inactive, need_rank=self._draws_known)
        policy = self._window_policy(x_init)
        spans = {_spans(w) for w in self._windows(policy)} if self._draws_known else set()
        batch = _Batch(list(range(B)), x_init.unsqueeze(0).expand(2, B, L).clone(),
                       torch.zeros(B, dtype=torch.int64, device=device), torch.zeros(B, dtype=torch.int64, device=device),
                       torch.full((B,), -1, dtype=torch.int64, device=device), seeds, plan,
                       {span: (plan.window_draws(span), self._reach(span, device)) for span in sorted(spans)})
        out, errors = x_init.clone(), torch.full((B,), -1, dtype=torch.int64, device=device)
        info = batch.read(self.config.mask_id)
        if policy is not None:
            policy.start(self._window_cap(max(info["remaining"]), B))
        rounds = rows = int(vocab is not None)
        returned = vocab
        residuals, windows, logits_rows, polls = [], [], 0, 0
        bar = _progress(self.config.progress, max(info["remaining"]), type(self).__name__)
        started = time.perf_counter()
        while True:
            self._raise_errors(info["err"], batch.slots)
            keep = [i for i, r in enumerate(info["remaining"]) if r > 0]
            if len(keep) < len(batch.slots):
                finished = [i for i in range(len(batch.slots)) if i not in keep]
                leaving = [batch.slots[i] for i in finished]
                out[leaving], errors[leaving] = batch.window[0, finished], batch.err[finished]
                if not keep:
                    break
                if self._buckets:  # keep some finished samples (they pass through) to stay on a power of two,
                    size = max(_pow2_at_least(len(keep)), min(2, len(batch.slots)))  # not 1: dynamo specialises it
                    keep = sorted(keep + finished[: size - len(keep)])
                info = {k: [v[i] for i in keep] for k, v in info.items()}
                batch = batch.select(keep)
                keep = list(range(len(keep)))
            left = max(info["remaining"])
            chosen = self.window if policy is None else policy.choose()
            W = min(chosen, self._window_cap(left, len(batch.slots)))
            batch.resize(W)
            budget = self._budget(info, keep, W)
            left_before = info["remaining"]
            # PIT: never a round that cannot be needed (each advances a sample by at most W steps);
            # sequential (W = 1): up to the next sample to finish, known from the plan
            if self.polls:
                todo = min(self.sync_interval(device), -(-left // W))
            else:  # samples kept to fill a bucket have nothing left
                todo = min(r for r in info["remaining"] if r > 0)
            for _ in range(todo):
                self.rounds_done += 1
                batch.window, batch.pos, batch.iters, batch.err, residual, V = self._round(
                    batch.window, batch.pos, batch.iters, batch.err, batch.plan.steps, batch.plan.total,
                    batch.plan.rank, batch.seeds, times, spec, budget, top_token, vocab)
                returned = returned or V
                if V != returned:  # a shape: no host read
                    raise ValueError(
                        f"denoiser returned vocab size V={V}, but it returned V={returned} earlier in this run")
                residuals.append(residual)
                windows.append(W)
                rows += self._call_rows(W, len(batch.slots))
                logits_rows += self._logits_rows(W, len(batch.slots), L, budget)
            rounds += todo
            if self.polls:
                info = batch.read(self.config.mask_id)
                polls += 1
            else:  # W = 1: every unfinished sample performed exactly `todo` more steps; no read
                info = {**info, "remaining": [max(0, r - todo) for r in info["remaining"]],
                        "err": [-1] * len(batch.slots)}
            if policy is not None:
                now = time.perf_counter()
                if W == chosen:  # a window cut short by the end of the run does not measure its steady state
                    live = [(a, b) for a, b in zip(left_before, info["remaining"]) if a > 0]  # not pass-through
                    policy.observe(W, (now - started) / todo, W * len(batch.slots),
                                   [(a - b) / todo for a, b in live], [a for a, _ in live])
                started = now
            if self.config.progress:
                bar.update(bar.total - max(info["remaining"]) - bar.n)
        bar.close()
        final = torch.cat([errors, (out == self.config.mask_id).any().view(1).to(torch.int64)]).tolist()  # one read
        self._raise_errors(final[:B], list(range(B)))
        if final[B]:
            raise RuntimeError("internal error: a mask survived the final fill")
        report = None if policy is None else policy.report()
        return SampleResult(out, rounds, rows / B, rounds - int(vocab is not None), residuals, self.exact, windows,
                            report, logits_rows / max(1, len(windows)), polls)

    def _device_tables(self, device: torch.device) -> tuple[ops.SweepSpec, Tensor]:
        """The sweep spec and the float32 time grid on ``device``, made once per device (a captured
        CUDA graph keeps reading the same tensors)."""
        if device not in self._tables_on:
            self._tables_on[device] = (self.spec.to(device), self.times.to(device=device, dtype=torch.float32))
        return self._tables_on[device]

    def sync_interval(self, device: torch.device) -> int:
        """Rounds between poll points: ``sync_every``, else 1 on the CPU (a host read costs nothing
        there) and 8 on an accelerator (each read stalls its queue)."""
        if self.config.sync_every is not None:
            return self.config.sync_every
        return 1 if device.type == "cpu" else 8

    def _raise_errors(self, codes: list[int], slots: list[int]) -> None:
        """Raise for the first recorded error (:func:`record_errors`) of any sample (``slots``: each
        code's sample in the caller's batch)."""
        for slot, code in zip(slots, codes):
            if code >= 0:
                sample, step = slot, code // 2
                if code % 2:
                    raise RuntimeError(f"internal error: the sweep flagged a bad step or a missing logits row "
                                       f"(sample {sample}, step {step})")
                raise ValueError(
                    f"denoiser returned NaN/inf logits (or only -inf, or logits that overflow float32 times "
                    f"1/temperature) on a row being sampled: sample {sample}, step {step}"
                )


def _concat(parts: list[SampleResult]) -> SampleResult:
    """One result for groups of a batch sampled one after the other (``max_rows`` below ``B``)."""
    B = sum(p.tokens.shape[0] for p in parts)
    return SampleResult(
        torch.cat([p.tokens for p in parts]), sum(p.rounds for p in parts),
        sum(p.nfe * p.tokens.shape[0] for p in parts) / B, sum(p.iterations for p in parts),
        [r for p in parts for r in p.residuals], all(p.exact for p in parts), [w for p in parts for w in p.windows],
        parts[-1].policy, sum(p.logits_rows * len(p.windows) for p in parts) / max(1, sum(len(p.windows) for p in parts)),
        sum(p.polls for p in parts),
    )


def _progress(enabled: bool, total: int, name: str):
    """A tqdm bar over the slowest sample's steps (a no-op object when disabled)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=name, unit="step", disable=not enabled, leave=False)


class TauLeapingSampler(_Sampler):
    """Sequential tau-leaping (one denoiser call per round; with skip-inactive, each unfinished
    sample at its own next active step). ``sample(x_init, seed)`` returns a :class:`SampleResult`.
    Its rounds are known from the plan: it never polls the device."""


AUTO_MAX_WINDOW = 64


class PITSampler(_Sampler):
    """Parallel-in-time (Picard) sampling over windows of ``window`` steps (arXiv 2607.00773).

    ``window="auto"`` (default) chooses the window each round from the measured call cost and
    convergence (:mod:`pit_sampler.window`: windows 1, 2, 4, ..., 64, maximising accepted steps per
    second; ``W = 1`` when parallel-in-time does not pay); ``SampleResult.windows`` and
    ``.policy`` say what it chose and why. An int fixes the window. Tokens never depend on the window.

    ``mode="exact"`` (default) slides each sample's window past its converged prefix; with
    ``tol=0`` the tokens equal :class:`TauLeapingSampler`'s for the same seed. ``tol > 0`` accepts
    slices whose changed fraction of positions is at most ``tol``. ``mode="fixed"`` runs exactly
    ``max_iters`` iterations per block of ``window`` steps (exact only if ``max_iters >= window``
    or the block converged earlier, which ends it early).

    ``max_rows`` (both samplers) is a hard cap on the rows of one denoiser call (a memory budget):
    a batch of more than ``max_rows`` samples runs in groups of ``max_rows``, one after the other,
    and windows shrink to the largest power of two within ``max_rows // B`` slices (``rounds``
    counts calls). Exactness is unaffected; fewer rows per call means more rounds.

    ``sync_every`` (default: 1 on the CPU, 8 on an accelerator) sets how many rounds run between
    poll points (host reads); a poll never comes later than the run could possibly finish.
    """

    polls = True

    def __init__(
        self,
        denoiser: Denoiser,
        *,
        window: int | str = "auto",
        max_iters: int | None = None,
        tol: float = 0.0,
        mode: str = "exact",
        **kwargs,
    ):
        super().__init__(denoiser, **kwargs)
        auto = isinstance(window, str) and window == "auto"
        if not (auto or (is_int(window) and window >= 1)):
            raise ValueError(f"window must be 'auto' or an int >= 1, got {window!r}")
        if mode not in ("exact", "fixed"):
            raise ValueError(f"mode must be 'exact' or 'fixed', got {mode!r}")
        if auto and mode == "fixed":
            raise ValueError("mode='fixed' runs blocks of a fixed window: give window an int, not 'auto'")
        if not (is_real(tol) and 0.0 <= tol < 1.0):
            raise ValueError(f"tol must lie in [0, 1), got {tol!r}")
        if mode == "fixed":
            if not (is_int(max_iters) and max_iters >= 1):
                raise ValueError(f"mode='fixed' needs max_iters, an int >= 1, got {max_iters!r}")
        else:
            if max_iters is not None:
                raise ValueError("max_iters applies to mode='fixed' (exact mode iterates until each slice converges)")
        self.auto = auto
        self.window = AUTO_MAX_WINDOW if auto else int(window)
        self.max_iters, self.tol, self.mode = max_iters, float(tol), mode
        self.exact = tol == 0.0 and (mode == "exact" or max_iters >= self.window)
        self._policies: dict[tuple, WindowPolicy] = {}

    def _window_policy(self, x):
        if not self.auto:
            return None
        key = (tuple(x.shape), x.device)
        if key not in self._policies:
            self._policies[key] = WindowPolicy(max_window=AUTO_MAX_WINDOW, warmup=int(self._buckets))
        return self._policies[key]

    def _accept(self, residual, live, iters_here, length):
        n_live = live.sum(0)
        settled = (residual <= self.tol * length) | ~live
        if self.mode == "fixed":
            done = settled.all(0) | (iters_here >= self.max_iters)
            return torch.where(done, n_live, 0)
        leading = torch.cumprod(settled[:-1].to(torch.int64), 0).sum(0)
        return torch.minimum(1 + leading, n_live)
