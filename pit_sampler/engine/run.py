"""The engine: the poll loop every sampler runs, whatever its step rule.

A run (:meth:`Engine.run`) is::

    check x, probe the vocabulary if needed, plan, first poll        (fixed host reads)
    repeat until every sample is finished:
        raise the first error of an accepted slice
        finished samples leave the batch                              (compaction, buckets)
        choose the window W (fixed, or the auto policy), resize
        run rounds until the next poll, each one device round         (no host read)
        poll: one read of each sample's steps left, errors, draw bounds, acceptance tallies
    tokens

Rounds per poll: ``min(sync_every, ceil(left / r))`` (``sync_every``: 1 on the CPU, where a read is
free; 8 on an accelerator), ``left`` the most steps a sample has left and ``r`` the rate at which
it fell per round since the previous poll (at most ``W``; ``W`` before the first measurement). So
polls stay one per ``sync_every`` rounds even where Picard accepts little per round, and a poll comes
no later than the run would finish at its measured pace: rounds past the end (finished samples pass
through) happen only where the pace picks up. ``W = 1`` (the sequential sampler) advances every
unfinished sample by exactly one step per round (``r = 1``). Host reads during ``run``: at most
about ``ceil(rounds / sync_every) +`` :data:`C_HOST_READS`.

Compiled or graphed rounds bucket the batch, the window tail and the logits budget to powers of two,
so a run compiles a bounded number of shapes. ``max_rows`` (a memory cap on the rows of one call)
splits a batch into groups run one after the other (:meth:`Engine.group_size`).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..config import SamplerConfig
from ..validation import check_token_range, inputs_checked
from .accept import Acceptance, raise_errors
from .call import DenoiserCall
from .graphs import GraphedRound
from .policy import WindowPolicy
from .result import SampleResult, concat
from .round import Round
from .window import Batch

# host reads of a run beside one per sync_every rounds: the ids' check, the first poll, the end, the
# package's denoisers' value checks on the run's first call (up to 2), and up to 2 polls that came
# early because the pace changed (the first interval assumes W steps per round)
C_HOST_READS = 7
AUTO_MAX_WINDOW = 64
AUTO_GROUP = 1  # with "auto", max_rows groups keep the most samples: more slices never pay for fewer samples


def pow2_at_least(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def read_ids(x: Tensor, mask_id: int, vocab_size: int | None, per_sample: Tensor) -> tuple[int, list[int]]:
    """One host read: the ids of ``x`` checked against ``[0, vocab_size)``; returns the largest prompt
    (non-mask) id (``-1``: none) and ``per_sample`` (int64, any shape) flattened to a list."""
    facts = torch.stack([x.min(), x.max(), torch.where(x == mask_id, -1, x).max()])
    low, high, top, *values = torch.cat([facts, per_sample.reshape(-1).to(torch.int64)]).tolist()
    check_token_range("x_init", low, high, vocab_size)
    return top, values


def check_top_token(top: int, V: int) -> None:
    """The largest prompt id against the denoiser's vocabulary size ``V``."""
    if top >= V:
        raise ValueError(f"x_init holds token id {top}, out of range for the denoiser's vocab size V={V}")


@dataclass
class _Run:
    """The host's bookkeeping of one run (one group of samples)."""

    out: Tensor
    errors: Tensor
    top_token: int
    vocab: int | None  # the vocabulary size the probe or the first round returned
    rate: float = math.inf  # steps per round the most steps left fell by between the last two polls
    rounds: int = 0
    rows: int = 0
    logits_rows: int = 0
    polls: int = 0
    residuals: list = field(default_factory=list)
    windows: list = field(default_factory=list)
    budgets: dict = field(default_factory=dict)  # bucketed rounds: the packed logits rows per span
    policy: WindowPolicy | None = None
    bar: object = None

    def leave(self, batch: Batch, finished: list[int]) -> None:
        """Keep the tokens and error codes of the samples ``finished`` (indices into ``batch``)."""
        device = batch.pos.device
        index = torch.tensor(finished, dtype=torch.int64, device=device)
        slots = torch.tensor([batch.slots[i] for i in finished], dtype=torch.int64, device=device)
        self.out[slots], self.errors[slots] = batch.window[0, index], batch.err[index]

    def check_vocab(self, V: int | None) -> None:
        """The vocabulary size a round returned (a shape: no host read) against the run's."""
        if V is None:  # this process made no call (a rank with no slice of the window)
            return
        if self.vocab is None:
            check_top_token(self.top_token, V)
            self.vocab = V
        elif V != self.vocab:
            raise ValueError(f"denoiser returned vocab size V={V}, but it returned V={self.vocab} earlier in this run")

    def result(self, mask_id: int, exact: bool) -> SampleResult:
        """One read: every sample's error code and whether a mask survived; then the result."""
        self.bar.close()
        B = self.out.shape[0]
        final = torch.cat([self.errors, (self.out == mask_id).any().view(1).to(torch.int64)]).tolist()
        raise_errors(final[:B], list(range(B)))
        if final[B]:
            raise RuntimeError("internal error: a mask survived the final fill")
        report = None if self.policy is None else self.policy.report()
        return SampleResult(self.out, self.rounds, self.rows / B, len(self.windows), self.residuals, exact,
                            self.windows, report, self.logits_rows / max(1, len(self.windows)), self.polls - 1)


def powers_of_two(top: int) -> list[int]:
    """Every window a run with windows up to ``top`` may use: ``top`` and the powers of two below it
    (the tail shrinks to them)."""
    return sorted({top} | {1 << k for k in range(top.bit_length()) if (1 << k) <= top})


def window_cap(left: int, batch: int, max_rows: int | None) -> int:
    """The largest window worth running (a power of two): no more slots than the most steps a sample
    has left (rounded up), and within ``max_rows`` rows per call."""
    cap = pow2_at_least(max(1, left))
    if max_rows is not None:
        cap = min(cap, 1 << (max(1, max_rows // batch).bit_length() - 1))
    return cap


class Engine:
    """The loop of every sampler (module docstring) for one step rule (:mod:`pit_sampler.steps`).

    ``window``: an int or ``"auto"`` (:mod:`pit_sampler.engine.policy`); ``acceptance``: how slices are
    accepted; ``sync_every``: rounds between polls (``None``: 1 on the CPU, 8 on an accelerator);
    ``cuda_graph``: capture each round shape once and replay it; ``round_type``: the round (a
    subclass may evaluate the window differently, e.g. split over ranks). ``clock``: the timer the
    auto policy reads (tests and simulations inject their own)."""

    def __init__(self, denoiser, rule, config: SamplerConfig, *, window: int | str = 1,
                 acceptance: Acceptance = Acceptance(), sync_every: int | None = None, cuda_graph: bool = False,
                 round_type=Round):
        self.rule, self.config, self.window, self.acceptance = rule, config, window, acceptance
        self.sync_every, self.cuda_graph = sync_every, cuda_graph
        self.auto = window == "auto"
        self.round = round_type(DenoiserCall(denoiser, config.mask_id, config.vocab_size), acceptance, self.auto)
        self.compiled = config.compile is not False
        options = config.compile if isinstance(config.compile, dict) else {}
        fn = torch.compile(self.round, **{"fullgraph": True, **options}) if self.compiled else self.round
        self._round = GraphedRound(fn) if cuda_graph else fn
        self._rules: dict[torch.device, object] = {}
        self._policies: dict[tuple, WindowPolicy] = {}
        self.clock = time.perf_counter
        self.rounds_done = 0  # rounds run so far in this sample() call (names the round of a failure)

    max_window = property(lambda self: AUTO_MAX_WINDOW if self.auto else self.window)

    @property
    def buckets(self) -> bool:
        """Round shapes come in powers of two when a compiled or captured round is reused."""
        return self.compiled or self.cuda_graph

    def sync_interval(self, device: torch.device) -> int:
        """Rounds between poll points: ``sync_every``, else 1 on the CPU and 8 on an accelerator."""
        return self.sync_every or (1 if device.type == "cpu" else 8)

    def group_size(self, batch: int) -> int:
        """Samples per group under ``max_rows``: a fixed window keeps its ``W`` slices (groups of
        ``max_rows // W`` samples, at least 1); the sequential sampler and ``"auto"`` keep the most
        samples (``max_rows``): at a fixed cost per call, ``W`` slices of ``B / W`` samples accept at most
        ``W`` steps per round where ``W`` calls of ``B`` samples make ``W`` steps, so more slices never pay
        for fewer samples. Rows of a call never exceed ``max_rows``."""
        cap = self.config.max_rows
        if cap is None:
            return batch
        slices = AUTO_GROUP if self.auto else self.window
        return max(1, cap // slices)

    def sample(self, x: Tensor, seeds: Tensor, vocab: int | None = None) -> SampleResult:
        """Fill every mask of ``x [B, L]`` (int64, checked) with per-sample ``seeds [B]``; ``vocab``: the
        vocabulary size if the caller learned it (:meth:`probe`): no run then spends a probe row."""
        self.rounds_done = 0
        g = self.group_size(x.shape[0])
        return concat([self.run(x[i : i + g], seeds[i : i + g], vocab, i) for i in range(0, x.shape[0], g)])

    # -- the loop ---------------------------------------------------------------------------------
    def run(self, x: Tensor, seeds: Tensor, vocab: int | None = None, first: int = 0) -> SampleResult:
        """One group of samples (the input's rows ``first, first + 1, ...``) through the poll loop
        (module docstring)."""
        rule = self._rule_on(x.device)
        run, batch, info = self._start(x, seeds, rule, vocab, first)
        while True:
            raise_errors(info["err"], batch.slots)
            batch, info = self._compact(run, batch, info)
            if batch is None:
                break
            left = max(info["remaining"])
            chosen = self.window if run.policy is None else run.policy.choose()
            W = min(chosen, window_cap(left, len(batch.slots), self.config.max_rows))
            batch.resize(W)
            budget = self._budget(run, info, W)
            todo = min(self.sync_interval(x.device), math.ceil(left / min(W, run.rate)))
            started = self.clock()
            for _ in range(todo):
                self._step(run, batch, rule, budget)
            info = batch.read(self.config.mask_id)
            run.polls += 1
            run.rate = max(1.0, (left - max(info["remaining"])) / todo)
            if run.policy is not None and W == chosen:  # a window cut short by the end does not measure it
                run.policy.observe_rounds(W, (self.clock() - started) / todo, W * len(batch.slots), info["tallies"],
                                          max(info["remaining"]))
            run.bar.update(run.bar.total - max(info["remaining"]) - run.bar.n)
        return run.result(self.config.mask_id, self.acceptance.is_exact(self.max_window))

    def _start(self, x: Tensor, seeds: Tensor, rule, vocab: int | None, first: int):
        """Check the ids (one read, with each sample's masked count and the largest prompt id), probe
        the vocabulary if needed (not when the caller knows it: ``vocab``), plan, first poll."""
        mask_id, B = self.config.mask_id, x.shape[0]
        top, counts = read_ids(x, mask_id, self.config.vocab_size, (x == mask_id).sum(1))
        run = _Run(x.clone(), torch.full((B,), -1, dtype=torch.int64, device=x.device), top, None)
        if vocab is not None:
            run.check_vocab(vocab)
        elif top >= 0 and self.config.vocab_size is None:
            run.vocab = self.probe(x[:1], top)
            run.rounds = run.rows = 1
        plan = rule.plan(x, seeds, counts)
        spans = {rule.span(w) for w in powers_of_two(self.max_window)} if rule.packing == "draws" else set()
        bounds = {s: (plan.window_draws(s), self._reach(s, x.device)) for s in sorted(spans)}
        batch = Batch.start(x, seeds, plan, bounds, first)
        info = batch.read(mask_id)
        run.policy = self._policy(x) if self.auto else None
        if run.policy is not None:
            run.policy.start(window_cap(max(info["remaining"]), B, self.config.max_rows))
        run.bar = _progress(self.config.progress, max(info["remaining"]), type(self.rule).__name__)
        return run, batch, info

    @contextlib.contextmanager
    def using(self, denoiser):
        """Rounds call ``denoiser`` instead of the engine's own inside the ``with`` block (the block
        sampler's view of a cache: :mod:`pit_sampler.block_cache`). Captured graphs hold the model they
        called: they are dropped on the way in and out (a compiled round recompiles by itself)."""
        own, forget = self.round.call, getattr(self._round, "forget", lambda: None)
        self.round.call = DenoiserCall(denoiser, own.mask_id, own.vocab_size)
        forget()
        try:
            yield
        finally:
            self.round.call = own
            forget()

    def probe(self, x: Tensor, top: int) -> int:
        """The vocabulary size from one all-mask row as long as ``x``'s rows (the first model call: its
        inputs are checked), so that ``top``, the largest prompt id, is reported here when out of
        range rather than inside the model."""
        probe = torch.full_like(x[:1], self.config.mask_id)
        index = torch.zeros(1, dtype=torch.int64, device=x.device)
        V = self.round.call(probe, self._rule_on(x.device).times[:1], index).shape[-1]
        check_top_token(top, V)
        return V

    def _step(self, run: _Run, batch: Batch, rule, budget: int) -> None:
        """One round on the device; the host only counts."""
        self.rounds_done += 1
        W, B = batch.window.shape[0] - 1, len(batch.slots)
        checked = inputs_checked() if run.rounds > 0 else contextlib.nullcontext()
        try:
            with checked:
                out = self._round(batch.window, batch.pos, batch.iters, batch.err, batch.seeds, batch.samples, rule,
                                  budget, batch.carry, *batch.plan.tensors())
        except torch._dynamo.exc.Unsupported as err:
            raise ValueError(f"compile={self.config.compile!r}: torch.compile(fullgraph=True) cannot trace a round "
                             f"with this denoiser (it must run without host reads such as .item() or "
                             f"data-dependent Python control flow); use compile=False. {err}") from err
        batch.window, batch.pos, batch.iters, batch.err, residual, V, tally, batch.carry = out
        run.check_vocab(V)
        if tally is not None:
            batch.tallies.append(tally)
        run.residuals.append(residual)
        run.windows.append(W)
        rows, logits_rows = self.round.cost(W, B, batch.window.shape[2], budget, rule)
        run.rounds += 1
        run.rows += rows
        run.logits_rows += logits_rows

    def _compact(self, run: _Run, batch: Batch, info: dict):
        """Finished samples leave (their tokens and error codes are kept); with buckets, some stay to
        keep the batch at a power of two (they pass through). ``(None, info)`` once none is left.
        Linear in the batch."""
        remaining = info["remaining"]
        keep = [i for i, r in enumerate(remaining) if r > 0]
        if len(keep) == len(batch.slots):
            return batch, info
        finished = [i for i, r in enumerate(remaining) if r <= 0]
        run.leave(batch, finished)
        if not keep:
            return None, info
        if self.buckets:  # a power of two, and not 1: dynamo specialises a batch of 1
            size = max(pow2_at_least(len(keep)), min(2, len(batch.slots)))
            keep = sorted(keep + finished[: size - len(keep)])
        info = {k: [v[i] for i in keep] for k, v in info.items() if k != "tallies"}
        return batch.select(keep), info

    # -- decisions --------------------------------------------------------------------------------
    def _reach(self, span: int, device: torch.device) -> int | None:
        """The window starts the rounds until the next poll can have, from the poll's ``pos``: up to
        ``sync_every - 1`` rounds of at most ``W`` slots each. ``None`` (the rest of the run) for
        bucketed rounds (their budget must stay in a few buckets)."""
        if self.buckets:
            return None
        W = span // 2 if self.rule.extension and span > 1 else span
        return (self.sync_interval(device) - 1) * W + 1

    def _budget(self, run: _Run, info: dict, W: int) -> int:
        """Packed logits rows a round needs at most until the next poll (0: the rule reads the full
        output). Bucketed rounds keep the run's first budget per span (a power of two, at least 2: dynamo
        specialises a size of 1): their bounds cover the rest of the run, so it never needs to grow,
        and a budget that shrank would only recompile the round."""
        packing = self.rule.packing
        if packing == "none":
            return 0
        span = self.rule.span(W)
        need = sum(info["masked"] if packing == "masked" else info[f"draws{span}"])
        if not self.buckets:
            return max(1, need)
        run.budgets[span] = max(run.budgets.get(span, 2), pow2_at_least(need))
        return run.budgets[span]

    def _rule_on(self, device: torch.device):
        """The rule with its tables on ``device``, made once per device (a captured graph keeps
        reading the same tensors)."""
        if device not in self._rules:
            self._rules[device] = self.rule.to(device)
        return self._rules[device]

    def _policy(self, x: Tensor) -> WindowPolicy:
        """The auto policy kept for these shapes and device: later runs start from what it learned."""
        key = (tuple(x.shape), x.device)
        if key not in self._policies:
            self._policies[key] = WindowPolicy(max_window=AUTO_MAX_WINDOW, warmup=int(self.buckets))
        return self._policies[key]


def _progress(enabled: bool, total: int, name: str):
    """A tqdm bar over the slowest sample's steps (a no-op object when disabled)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=name, unit="step", disable=not enabled, leave=False)
