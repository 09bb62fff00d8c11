"""Samplers for absorbing (masked) diffusion: sequential tau-leaping and parallel-in-time Picard.

Both run the same loop (orchestration only; all sampling math lives in :mod:`pit_sampler.ops`):
each sample has a *plan*, the ordered list of global steps it must perform (with skip-inactive,
only the steps at which at least one of its positions unmasks, read off the noise by
``ops.unmask_table``; otherwise every step ``0..N``). A window of ``W`` consecutive planned steps
per sample is evaluated by one batched denoiser call on the window's ``W`` states, then one
``ops.sweep`` computes every slice's new state from the window's exact first state.

* ``TauLeapingSampler`` is ``W = 1``: every round advances every unfinished sample by one step.
* ``PITSampler`` (exact mode) slides each sample's window by ``c = 1 +`` the number of leading
  slices whose state did not change since the previous iterate (those slices saw exact inputs, so
  the first ``c`` new states are exact), refilling new slots with the last state (ParaDiGMS). With
  ``tol = 0`` the tokens equal the sequential sampler's, bit for bit, for a batch-invariant denoiser.
  ``tol > 0`` accepts slices whose changed fraction is at most ``tol``; ``mode="fixed"`` runs blocks
  of ``W`` steps with exactly ``max_iters`` iterations each (the paper's block form). Both are
  approximate and say so in ``SampleResult.exact``.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from . import ops
from .noise import sample_seeds
from .rules import RULES, step_tables
from .schedules import GRIDS, Schedule, get_schedule, time_grid
from .validation import check_dense_tensor, check_temperature, is_int, is_real
from .window import WindowPolicy

Denoiser = Callable[[Tensor, Tensor], Tensor]


@dataclass
class SampleResult:
    """``tokens [B, L]`` (no mask left); ``rounds``: sequential denoiser calls; ``nfe``: denoiser rows
    evaluated per sample (total compute / B); ``iterations``: sweeps run; ``residuals``: per iteration,
    int32 ``[W, B]`` positions changed per slice; ``exact``: whether the result is the exact sequential
    sample; ``windows``: the window of each round; ``policy``: with ``window="auto"``, the measured cost
    model that chose them (:meth:`pit_sampler.window.WindowPolicy.report`)."""

    tokens: Tensor
    rounds: int
    nfe: float
    iterations: int
    residuals: list[Tensor] = field(default_factory=list)
    exact: bool = True
    windows: list[int] = field(default_factory=list)
    policy: dict | None = None


class _Sampler:
    window = 1

    def __init__(
        self,
        denoiser: Denoiser,
        *,
        mask_id: int,
        num_steps: int,
        schedule: str | Schedule = "loglinear",
        rule: str = "reject",
        grid: str = "geometric",
        t_max: float = 1.0,
        t_min: float = 1e-3,
        final: str = "sample",
        parametrization: str = "mean",
        temperature: float = 1.0,
        skip_inactive: bool | None = None,
        vocab_size: int | None = None,
        max_rows: int | None = None,
        progress: bool = False,
        compile: bool = False,
    ):
        if not callable(denoiser):
            raise TypeError(f"denoiser must be callable, got {type(denoiser).__name__}")
        if not (is_int(mask_id) and mask_id >= 0):
            raise ValueError(f"mask_id must be an int >= 0, got {mask_id!r}")
        if not (is_int(num_steps) and num_steps >= 1):
            raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}")
        if rule not in RULES:
            raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
        if grid not in GRIDS:
            raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}")
        if final not in ("sample", "argmax"):
            raise ValueError(f"final must be 'sample' or 'argmax', got {final!r}")
        if parametrization not in ("mean", "score"):
            raise ValueError(f"parametrization must be 'mean' or 'score', got {parametrization!r}")
        temperature = check_temperature(temperature)
        score = parametrization == "score"
        if skip_inactive is None:
            skip_inactive = not score
        if score and skip_inactive:
            raise ValueError("skip_inactive needs the mean parametrization (score rates depend on the model)")
        if not (vocab_size is None or (is_int(vocab_size) and vocab_size > mask_id)):
            raise ValueError(f"vocab_size must be an int > mask_id={mask_id}, got {vocab_size!r}")
        if not (max_rows is None or (is_int(max_rows) and max_rows >= 1)):
            raise ValueError(f"max_rows must be None or an int >= 1, got {max_rows!r}")
        self.denoiser = denoiser
        self.mask_id, self.num_steps, self.rule, self.final = int(mask_id), int(num_steps), rule, final
        self.max_rows = None if max_rows is None else int(max_rows)
        self.schedule = get_schedule(schedule)
        self.times = time_grid(num_steps, grid, t_max, t_min)  # validates t_max, t_min
        self.tables = step_tables(self.schedule, self.times, rule)
        if score:
            if not bool(torch.isfinite(self.tables.rate).all()):
                raise ValueError(
                    f"schedule {self.schedule!r} has an infinite score rate at t_max={t_max} (needs alpha(t_max) > 0)"
                )
        self.parametrization, self.score = parametrization, score
        self.temperature, self.skip_inactive = float(temperature), bool(skip_inactive)
        self.vocab_size, self.progress = None if vocab_size is None else int(vocab_size), progress
        self.rule_id = self.tables.rule
        self.compiled = bool(compile)
        self._step = torch.compile(self.step, fullgraph=True) if compile else self.step

    # -- what each subclass decides -----------------------------------------------------------
    def _accept(self, residual: Tensor, live: Tensor, iters_here: Tensor, length: int) -> Tensor:
        """Slices each sample accepts this iteration (``[B]``), given ``residual [W, B]`` and ``live [W, B]``."""
        return live[0].to(torch.int64)

    exact = True

    # -- the shared loop ------------------------------------------------------------------------
    def _check_x_init(self, x_init) -> None:
        check_dense_tensor("x_init", x_init)
        if x_init.is_floating_point() or x_init.is_complex() or x_init.dtype == torch.bool:
            raise TypeError(f"x_init must hold integer token ids, got {x_init.dtype}")
        if x_init.dim() != 2:
            raise ValueError(f"x_init must have shape [B, L], got {tuple(x_init.shape)}")
        if x_init.shape[0] == 0:
            raise ValueError("x_init is an empty batch (B = 0)")
        if x_init.shape[1] == 0:
            raise ValueError("x_init has no positions (L = 0)")
        if bool((x_init < 0).any()):
            raise ValueError("x_init holds negative token ids")
        if self.vocab_size is not None:
            top = int(x_init.max())
            if top >= self.vocab_size:
                raise ValueError(f"x_init holds token id {top}, out of range for vocab_size={self.vocab_size}")

    def _probe_vocab(self, x_init: Tensor, times: Tensor) -> tuple[int, int | None]:
        """``(top, V)``: the largest prompt token id, and the vocabulary size if it had to be learned.

        Without ``vocab_size``, a prompt (non-mask tokens) costs one all-mask denoiser row (counted in
        ``rounds`` and ``nfe``) to learn ``V``, so an out-of-range id is reported here rather than
        crashing inside the model. ``V`` is ``None`` when no probe was needed.
        """
        prompt = x_init != self.mask_id
        if not bool(prompt.any()):
            return 0, None
        top = int(x_init[prompt].max())
        if self.vocab_size is not None:
            return top, None
        probe = self.denoiser(torch.full_like(x_init[:1], self.mask_id), times[:1])
        if not (isinstance(probe, Tensor) and probe.dim() == 3):
            return top, None  # _check_logits reports it on the first real call
        if top >= probe.shape[2]:
            raise ValueError(f"x_init holds token id {top}, out of range for the denoiser's vocab size V={probe.shape[2]}")
        return top, probe.shape[2]

    def _plan(self, x: Tensor, seeds: Tensor, tables) -> tuple[Tensor, Tensor]:
        """``(plan, total)``: int64 ``[B, S]``, each sample's steps in increasing order (entries past
        ``total[b]`` are padding), and int64 ``[B]``, how many steps each sample must perform.

        With skip-inactive, the distinct steps of the unmask table's row (at most ``L + 1`` per
        sample, found by sorting the ``[B, L]`` table, so memory never scales with ``N``); otherwise
        every step ``0..N`` for a sample with a masked position (a broadcast view: no ``[B, N]`` copy).
        """
        B, N = x.shape[0], self.num_steps
        if not self.skip_inactive:
            total = torch.where((x == self.mask_id).any(1), N + 1, 0)
            return torch.arange(N + 1, device=x.device).expand(B, N + 1), total
        table = ops.unmask_table(x, seeds, tables.cdf, self.mask_id, tables.rule).sort(1).values
        first = torch.ones_like(table, dtype=torch.bool)
        first[:, 1:] = table[:, 1:] != table[:, :-1]
        keep = first & (table >= 0)
        total = keep.sum(1)
        plan = torch.where(keep, table, N + 1).sort(1).values[:, : max(1, int(total.max()))]
        return plan, total

    def _check_logits(self, logits, xs: Tensor, top_token: int, vocab: int | None) -> None:
        """Shape, dtype and vocab checks on the denoiser's output (static: fine inside a compiled step).
        ``vocab``: the vocabulary size this run's first call (or probe) returned."""
        R, L = xs.shape
        if not isinstance(logits, Tensor):
            raise TypeError(f"denoiser must return a torch.Tensor, got {type(logits).__name__}")
        if logits.dtype not in ops.LOGITS_DTYPES:
            raise TypeError(f"denoiser must return float logits (float64/32, bfloat16, float16), got {logits.dtype}")
        if not (logits.dim() == 3 and logits.shape[0] == R and logits.shape[1] == L):
            raise ValueError(f"denoiser returned logits of shape {tuple(logits.shape)}, expected [{R}, {L}, V]")
        V = logits.shape[2]
        if not (self.vocab_size is None or V == self.vocab_size):
            raise ValueError(f"denoiser returned vocab size V={V}, but vocab_size={self.vocab_size}")
        if not (vocab is None or V == vocab):
            raise ValueError(f"denoiser returned vocab size V={V}, but it returned V={vocab} earlier in this run")
        if self.mask_id >= V:
            raise ValueError(f"mask_id={self.mask_id} is out of range for the denoiser's vocab size V={V}")
        if top_token >= V:
            raise ValueError(f"x_init holds token id {top_token}, out of range for the denoiser's vocab size V={V}")
        if logits.device != xs.device:
            raise ValueError(f"denoiser returned logits on {logits.device}, expected {xs.device}")

    def step(self, xs, ts, rows, steps, x0, prev, seeds, cdf, rate, top_token: int, vocab: int | None = None,
             ext_rows=None, ext_steps=None):
        """One iteration: the batched denoiser call on the window rows ``xs [R, L]`` at times ``ts [R]``,
        then one fused sweep. Returns ``(states [W, B, L], residual [W, B], invalid [W, B], ext, V)``.

        With ``ext_rows``/``ext_steps`` (``[W, B]``), a second sweep continues from the window's last
        state over the next planned steps, reusing each sample's last logits row: no extra denoiser
        rows, and ``ext`` (its states) is a better initial guess for the slots the window slides into
        than the last state repeated. Pure tensor code with static checks:
        ``torch.compile(sampler.step, fullgraph=True)`` traces it whole."""
        logits = self.denoiser(xs, ts)
        if isinstance(logits, Tensor) and logits.dtype == torch.float64:
            logits = logits.float()  # the kernels' precision; float64 models (e.g. exact oracles) are welcome
        self._check_logits(logits, xs, top_token, vocab)
        sweep = functools.partial(
            ops.sweep, seeds=seeds, cdf=cdf, rate=rate, mask_id=self.mask_id, temperature=self.temperature,
            rule=self.rule_id, score=self.score, argmax_final=self.final == "argmax",
        )
        states, _, residual, invalid = sweep(logits, rows, steps, x0, prev)
        ext = None if ext_rows is None else sweep(logits, ext_rows, ext_steps, states[-1], states)[0]
        return states, residual, invalid, ext, logits.shape[2]

    def _window_policy(self, x: Tensor) -> WindowPolicy | None:
        """``None`` for a fixed window; with ``window="auto"``, the policy kept for these shapes."""
        return None

    def _raise_invalid(self, invalid: Tensor, accepted: Tensor, steps: Tensor) -> None:
        """Raise for an invalid row on a slice the run keeps (``accepted [W, B]``); rows of slices that are
        discarded ran on guessed states the sequential chain may never visit, and may be anything."""
        bad = (invalid != 0) & accepted
        if bool(bad.any()):
            w, b = bad.nonzero()[0].tolist()
            if int(invalid[w, b]) < 0:
                raise RuntimeError(f"internal error: the sweep flagged an out-of-range step or row (sample {b})")
            raise ValueError(
                f"denoiser returned NaN/inf logits (or only -inf, or logits that overflow float32 times 1/temperature) "
                f"on a row being sampled: sample {b}, step {int(steps[w, b])}"
            )

    def _live_slices(self, pos: Tensor, total: Tensor, offsets: Tensor) -> Tensor:
        """``[W, B]``: the slices evaluated this round. With ``max_rows``, a hard cap on rows per call: at
        most ``max_rows`` unfinished samples (lowest index first) take part, each with
        ``max(1, max_rows // participants)`` slices; the others wait for a later round."""
        live = (pos.unsqueeze(0) + offsets.unsqueeze(1)) < total.unsqueeze(0)
        if self.max_rows is None:
            return live
        unfinished = pos < total
        chosen = unfinished & (unfinished.cumsum(0) <= self.max_rows)
        fit = max(1, self.max_rows // max(1, int(chosen.sum())))
        return live & chosen.unsqueeze(0) & (offsets.unsqueeze(1) < fit)

    @torch.no_grad()
    def sample(self, x_init: Tensor, seed: int | Tensor = 0) -> SampleResult:
        """Fill every ``mask_id`` position of ``x_init`` (``[B, L]``; other positions are kept).

        ``seed``: an int in ``[-2**63, 2**64)`` (its 64 bits key the noise; per-sample seeds are derived
        from it and the slot) or an int64 tensor ``[B]`` of per-sample seeds. Runs under
        ``torch.no_grad()``: a model with trainable parameters builds no autograd graph."""
        self._check_x_init(x_init)
        x_init = x_init.to(torch.int64)
        device, (B, L) = x_init.device, x_init.shape
        seeds = sample_seeds(seed, B, device)
        tables = self.tables.to(device)
        times = self.times.to(device=device, dtype=torch.float32)
        plan, total = self._plan(x_init, seeds, tables)
        S = plan.shape[1]
        policy = self._window_policy(x_init)
        if policy is not None:
            policy.start(S)
        W = min(self.window, S) if policy is None else policy.current  # never more slots than plan steps
        pos = torch.zeros(B, dtype=torch.int64, device=device)
        iters_here = torch.zeros(B, dtype=torch.int64, device=device)
        window = x_init.unsqueeze(0).repeat(W + 1, 1, 1)  # window[i]: state before slice i; [0] exact
        top_token, vocab = self._probe_vocab(x_init, times)
        residuals, windows, rounds, rows_evaluated = [], [], int(vocab is not None), int(vocab is not None)
        bar = _progress(self.progress, int(total.max()), type(self).__name__)
        while bool((pos < total).any()):
            if policy is not None:
                started = _now(device)
                window = _resize_window(window, policy.choose())
            W = window.shape[0] - 1
            offsets = torch.arange(W, device=device)
            idx = pos.unsqueeze(0) + offsets.unsqueeze(1)  # [W, B]
            live = self._live_slices(pos, total, offsets)
            steps = torch.where(live, plan.gather(1, idx.clamp(max=S - 1).T).T, -1)
            w_idx, b_idx = live.nonzero(as_tuple=True)
            rows = torch.full((W, B), -1, dtype=torch.int64, device=device)
            rows[w_idx, b_idx] = torch.arange(len(w_idx), device=device)
            n_live = live.sum(0)
            ext_rows = ext_steps = None
            if W > 1:  # guesses for the slots past this window: the next planned steps, last logits row reused
                ext_idx = (pos + n_live).unsqueeze(0) + offsets.unsqueeze(1)
                ext_live = (ext_idx < total.unsqueeze(0)) & (n_live > 0).unsqueeze(0)
                ext_steps = torch.where(ext_live, plan.gather(1, ext_idx.clamp(max=S - 1).T).T, -1)
                last_row = rows.gather(0, (n_live - 1).clamp(min=0).unsqueeze(0))
                ext_rows = torch.where(ext_live, last_row, -1)
            states, residual, invalid, ext, vocab = self._step(
                window[w_idx, b_idx], times[steps[w_idx, b_idx]], rows, steps, window[0], window[1:], seeds,
                tables.cdf, tables.rate, top_token, vocab, ext_rows, ext_steps,
            )
            rounds += 1
            rows_evaluated += len(w_idx)
            residuals.append(residual)
            windows.append(W)
            iters_here += live[0]
            accept = self._accept(residual, live, iters_here, L)
            self._raise_invalid(invalid, offsets.unsqueeze(1) < accept.unsqueeze(0), steps)
            if policy is not None:
                policy.observe(W, _now(device) - started, len(w_idx), int(accept.sum()))
            # seq[k]: the state after k steps from the window's start: x0, the live slices, then ext
            k = accept.unsqueeze(0) + torch.arange(W + 1, device=device).unsqueeze(1)
            full = torch.cat([window[:1], states] + ([ext] if ext is not None else []))
            k = torch.where(k <= n_live, k, W + k - n_live).clamp(max=full.shape[0] - 1)
            slid = full.gather(0, k.unsqueeze(-1).expand(W + 1, B, L))
            window = torch.where((n_live > 0).view(1, B, 1), slid, window)  # waiting samples keep their iterate
            pos += accept
            iters_here = torch.where(accept > 0, 0, iters_here)
            if self.progress:
                bar.update(int(pos.clamp(max=total).max()) - bar.n)
        bar.close()
        tokens = window[0]
        if bool((tokens == self.mask_id).any()):
            raise RuntimeError("internal error: a mask survived the final fill")
        report = None if policy is None else policy.report()
        return SampleResult(tokens, rounds, rows_evaluated / B, rounds, residuals, self.exact, windows, report)


def _now(device: torch.device) -> float:
    """Wall-clock seconds, after the device has finished its queued work (honest timing on CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _resize_window(window: Tensor, size: int) -> Tensor:
    """The window states ``[W + 1, B, L]`` resized to ``size + 1`` slots: cut, or padded with the last
    state (any initial guess keeps the result exact)."""
    extra = size + 1 - window.shape[0]
    if extra <= 0:
        return window[: size + 1]
    return torch.cat([window, window[-1:].expand(extra, *window.shape[1:])])


def _progress(enabled: bool, total: int, name: str):
    """A tqdm bar over the slowest sample's steps (a no-op object when disabled)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=name, unit="step", disable=not enabled, leave=False)


class TauLeapingSampler(_Sampler):
    """Sequential tau-leaping (one denoiser call per round; with skip-inactive, each unfinished
    sample at its own next active step). ``sample(x_init, seed)`` returns a :class:`SampleResult`.
    ``max_rows`` caps the rows of a call: then at most ``max_rows`` samples advance per round."""


AUTO_MAX_WINDOW = 64


class PITSampler(_Sampler):
    """Parallel-in-time (Picard) sampling over windows of ``window`` steps (arXiv 2607.00773).

    ``window="auto"`` (default) chooses the window each round from the measured call cost and
    convergence (:mod:`pit_sampler.window`: windows 1, 2, 4, ..., 64, hill-climbing on accepted steps
    per second; ``W = 1`` when parallel-in-time does not pay); ``SampleResult.windows`` and
    ``.policy`` say what it chose and why. An int fixes the window. Tokens never depend on the window.

    ``mode="exact"`` (default) slides each sample's window past its converged prefix; with
    ``tol=0`` the tokens equal :class:`TauLeapingSampler`'s for the same seed. ``tol > 0`` accepts
    slices whose changed fraction of positions is at most ``tol``. ``mode="fixed"`` runs exactly
    ``max_iters`` iterations per block of ``window`` steps (exact only if ``max_iters >= window``
    or the block converged earlier, which ends it early).

    ``max_rows`` (both samplers) is a hard cap on the rows of one denoiser call (a memory budget:
    logits are ``rows x L x V``): at most ``max_rows`` unfinished samples take part in a round, each
    window shrunk to ``max(1, max_rows // participants)`` slices; the other samples wait for a later
    round (``rounds`` counts calls). Exactness is unaffected; fewer rows per call means more rounds.
    """

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
            self._policies[key] = WindowPolicy(max_window=AUTO_MAX_WINDOW, warmup=int(self.compiled))
        return self._policies[key]

    def _accept(self, residual, live, iters_here, length):
        n_live = live.sum(0)
        settled = (residual <= self.tol * length) | ~live
        if self.mode == "fixed":
            done = settled.all(0) | (iters_here >= self.max_iters)
            return torch.where(done, n_live, 0)
        leading = torch.cumprod(settled[:-1].to(torch.int64), 0).sum(0)
        return torch.minimum(1 + leading, n_live)
