"""k-per-step unmasking (MaskGIT / LLaDA style), sequential or exact parallel-in-time (Picard).

The sampler
-----------
Sample ``b`` has ``M_b`` masked positions in ``x_init`` (the rest is its prompt and never changes)
and runs ``N = num_steps`` steps ``j = 0..N-1``. With ``block_length = bl`` (LLaDA's
semi-autoregressive blocks) the masked positions, in position order, form ``n_blocks = M_b / bl``
blocks of ``bl`` (LLaDA's blocks when the masks are the generation region after the prompt); block
``i`` runs steps ``i s .. (i + 1) s - 1`` with ``s = N / n_blocks`` and unmasks only inside itself.
Without blocks there is one block of ``n = M_b`` positions and ``s = N`` steps. Within a block of
``n`` positions and ``s`` steps, step ``i`` unmasks exactly ``k_i`` positions:

* ``linear`` (LLaDA's ``get_num_transfer_tokens``): ``k_i = floor(n / s) + [i < n mod s]``;
* ``cosine`` (MaskGIT): the number still masked after step ``i`` is
  ``m_i = min(n - 1 - i, min_{i' <= i} (d_{i'} + i') - i)`` with
  ``d_i = max(floor(n cos(pi/2 (i + 1) / s)), s - 1 - i)`` (``d_{s-1} = 0``), i.e. MaskGIT's
  ``floor(n gamma((i + 1) / s))`` forced strictly decreasing with room for one unmasking per
  remaining step; ``k_i = m_{i-1} - m_i`` (``m_{-1} = n``), so ``k_i >= 1`` and ``sum_i k_i = n``.

``s <= n`` is required (every step unmasks at least one position), ``bl`` must divide ``M_b`` and
``n_blocks`` must divide ``N`` (as LLaDA asserts); violations raise ``ValueError`` naming the argument.
Step ``j`` evaluates the denoiser at the state ``x_j`` (time input ``t_j = 1 - j / N``), draws a token
and a score for every masked position of the current block, and gives the ``k_j`` highest-scoring
positions their tokens (:mod:`pit_sampler.maskgit_reference`: Gumbel-max keyed by
``(seed, j, l, v)``, scores in fixed point, ties to the lowest position; ``order="random"`` is a
uniform keyed by ``(seed, j, l)`` on its own noise stream).

Picard
------
Each step is a deterministic map ``x_{j+1} = F_j(x_j, D(x_j))`` of the state and the denoiser
output. Over a window of ``W`` steps, one batched call evaluates ``D`` on the previous iterate's
states ``x^(p)_{j..j+W-1}``; the sweep then recomputes the states slice by slice from the exact
``x_j``: ``x^(p+1)_{i+1} = F_i(x^(p+1)_i, D(x^(p)_i))`` (the integral form: each slice selects its
top ``k_i`` among the positions still masked in the *running new* state, with the logits the
previous iterate gave that slice). If ``x^(p+1)_{j+1..j+c-1}`` equal ``x^(p)``, slices
``j..j+c-1`` saw exact logits, so ``c`` new states are exact and the window slides by ``c``
(new slots start from the last state). With ``tol = 0`` the tokens equal the sequential
sampler's (``window = 1``) bit for bit, for a batch-invariant denoiser. ``tol > 0`` accepts slices
that changed in at most ``tol L`` positions (approximate; ``SampleResult.exact`` says so).

Host synchronisation: one per round, the loop condition, which reads every sample's progress and
whether a row was invalid; the window's row layout is built on the host from that.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from . import maskgit_ops, ops
from .maskgit_reference import ORDERS
from .noise import sample_seeds
from .samplers import SampleResult
from .adapters import resolve_sampler_kwargs
from .config import SamplerConfig
from .validation import check_token_batch, is_int, is_real

SCHEDULES = ("linear", "cosine")
Denoiser = Callable[[Tensor, Tensor], Tensor]


def block_counts(n: int, s: int, schedule: str) -> list[int]:
    """``[k_0, ..., k_{s-1}]``: positions unmasked at each of a block's ``s`` steps (``n >= s``)."""
    if schedule == "linear":
        return [n // s + (i < n % s) for i in range(s)]
    d = [max(math.floor(n * math.cos(math.pi / 2 * (i + 1) / s)), s - 1 - i) for i in range(s - 1)] + [0]
    remaining, low = [], n
    for i, di in enumerate(d):
        low = min(low, di + i)
        remaining.append(min(n - 1 - i, low - i))
    return [a - b for a, b in zip([n] + remaining[:-1], remaining)]


def unmask_plan(x: Tensor, mask_id: int, num_steps: int, block_length: int | None, schedule: str):
    """``(kcount [B, N], step_block [B, N], pos_block [B, L])`` int64 on ``x``'s device: positions
    unmasked at each step, the block each step works in, each masked position's block (``-1``: prompt)."""
    masked = x == mask_id
    rank = masked.cumsum(1) - 1
    bl = block_length or x.shape[1]
    pos_block = torch.where(masked, rank // bl, -1)
    kcount, step_block = [], []
    for b, m in enumerate(masked.sum(1).tolist()):
        n = m if block_length is None else block_length
        if block_length is not None and m % block_length:
            raise ValueError(f"block_length={block_length} must divide the number of masked positions ({m}) of sample {b}")
        blocks = m // n if n else 0
        if blocks == 0 or num_steps % blocks:
            raise ValueError(
                f"num_steps={num_steps} must be a multiple of the number of blocks ({blocks}) of sample {b}"
                + ("" if block_length is None else f" (block_length={block_length}, {m} masked positions)")
            )
        s = num_steps // blocks
        if s > n:
            raise ValueError(
                f"num_steps={num_steps} gives {s} steps per block, more than the {n} masked positions per block "
                f"of sample {b}: every step must unmask at least one position"
            )
        kcount.append(block_counts(n, s, schedule) * blocks)
        step_block.append([j // s for j in range(num_steps)])
    as_tensor = lambda v: torch.tensor(v, dtype=torch.int64, device=x.device)  # noqa: E731
    return as_tensor(kcount), as_tensor(step_block), pos_block


class MaskGITSampler:
    """k-per-step unmasking by ``order`` (``confidence``, ``margin``, ``entropy``, ``random``), with
    exact Picard windows (module docstring). ``sample(x_init, seed)`` returns a :class:`SampleResult`.

    ``window = 1`` is the sequential sampler; ``window > 1`` evaluates ``window`` steps per denoiser
    call and, with ``tol = 0``, gives the same tokens. ``temperature = 0`` draws greedily (argmax).
    ``max_rows`` caps the rows of a call (windows shrink to ``max(1, max_rows // B)`` slices).
    ``compile`` compiles the per-round step (denoiser call + sweep) with ``torch.compile``.
    """

    def __init__(
        self,
        denoiser: Denoiser,
        config: SamplerConfig | None = None,
        *,
        order: str = "confidence",
        unmask_schedule: str = "linear",
        block_length: int | None = None,
        window: int = 1,
        tol: float = 0.0,
        **kwargs,
    ):
        """``config``: a :class:`~pit_sampler.config.SamplerConfig` (``mask_id``, ``num_steps``,
        ``temperature``, ``vocab_size``, ``max_rows``, ``progress``, ``compile``); keyword arguments
        are its fields (they override ``config``'s)."""
        if not callable(denoiser):
            raise TypeError(f"denoiser must be callable, got {type(denoiser).__name__}")
        given = resolve_sampler_kwargs(denoiser, SamplerConfig.arguments(config, kwargs), keys=("mask_id", "vocab_size"))
        if "mask_id" not in given or "num_steps" not in given:
            raise TypeError("a sampler needs mask_id and num_steps (mask_id may come from a denoiser adapter)")
        self.config = c = SamplerConfig(**given)
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        if unmask_schedule not in SCHEDULES:
            raise ValueError(f"unmask_schedule must be one of {SCHEDULES}, got {unmask_schedule!r}")
        if not (block_length is None or (is_int(block_length) and block_length >= 1)):
            raise ValueError(f"block_length must be None or an int >= 1, got {block_length!r}")
        if not (is_int(window) and window >= 1):
            raise ValueError(f"window must be an int >= 1, got {window!r}")
        if not (is_real(tol) and 0.0 <= tol < 1.0):
            raise ValueError(f"tol must lie in [0, 1), got {tol!r}")
        self.denoiser = denoiser
        self.order, self.order_id, self.unmask_schedule = order, ORDERS.index(order), unmask_schedule
        self.block_length, self.window, self.tol = block_length, int(window), float(tol)
        self.exact = tol == 0.0
        options = c.compile if isinstance(c.compile, dict) else {}
        compiled = c.compile is not False
        self._step = torch.compile(self.step, **{"fullgraph": True, "dynamic": True, **options}) if compiled else self.step

    def _check_logits(self, logits, xs: Tensor, top_token: int) -> None:
        """Static checks on the denoiser's output (fine inside a compiled step)."""
        if not isinstance(logits, Tensor):
            raise TypeError(f"denoiser must return a torch.Tensor, got {type(logits).__name__}")
        if logits.dtype not in ops.LOGITS_DTYPES:
            raise TypeError(f"denoiser must return float logits (float64/32, bfloat16, float16), got {logits.dtype}")
        if not (logits.dim() == 3 and logits.shape[0] == xs.shape[0] and logits.shape[1] == xs.shape[1]):
            raise ValueError(f"denoiser returned logits of shape {tuple(logits.shape)}, expected [{xs.shape[0]}, {xs.shape[1]}, V]")
        V = logits.shape[2]
        if not (self.config.vocab_size is None or V == self.config.vocab_size):
            raise ValueError(f"denoiser returned vocab size V={V}, but vocab_size={self.config.vocab_size}")
        if top_token >= V:
            raise ValueError(f"x_init holds token id {top_token}, out of range for the denoiser's vocab size V={V}")

    def step(self, xs, ts, rows, steps, x0, prev, seeds, kcount, slice_block, pos_block, top_token: int):
        """One round: the batched denoiser call on the window rows ``xs [R, L]`` at times ``ts [R]``,
        then one fused sweep; returns ``(states [W, B, L], residual [W, B], invalid [W, B])``."""
        logits = self.denoiser(xs, ts)
        if isinstance(logits, Tensor) and logits.dtype == torch.float64:
            logits = logits.float()
        self._check_logits(logits, xs, top_token)
        return maskgit_ops.maskgit_sweep(
            logits, rows, steps, x0, prev, seeds, kcount, slice_block, pos_block, self.config.mask_id,
            self.config.temperature, self.order_id,
        )

    def _layout(self, pos: list[int], W: int, device):
        """Host-built window layout from each sample's progress: ``(live [W, B] bool, rows [W, B],
        w_idx, b_idx)`` (rows index the denoiser call's ``R`` rows, ``-1`` where dead)."""
        fit = W if self.config.max_rows is None else max(1, min(W, self.config.max_rows // len(pos)))
        live = [[w < fit and p + w < self.config.num_steps for p in pos] for w in range(W)]
        live = torch.tensor(live, dtype=torch.bool)
        w_idx, b_idx = live.nonzero(as_tuple=True)
        rows = torch.full(live.shape, -1, dtype=torch.int64)
        rows[w_idx, b_idx] = torch.arange(len(w_idx))
        return live.to(device), rows.to(device), w_idx.to(device), b_idx.to(device)

    def _accept(self, residual: Tensor, live: Tensor, length: int) -> Tensor:
        """Slices each sample accepts: 1 + its leading slices (but the last) whose state did not change."""
        settled = (residual <= self.tol * length) | ~live
        leading = torch.cumprod(settled[:-1].to(torch.int64), 0).sum(0)
        return torch.minimum(1 + leading, live.sum(0))

    @torch.no_grad()
    def sample(self, x_init: Tensor, seed: int | Tensor = 0) -> SampleResult:
        """Fill every ``mask_id`` position of ``x_init`` (``[B, L]``; other positions are kept)."""
        top_token = check_token_batch("x_init", x_init, self.config.vocab_size)
        x = x_init.to(torch.int64)
        device, (B, L), N = x.device, x.shape, self.config.num_steps
        W = min(self.window, N)
        seeds = sample_seeds(seed, B, device)
        k_table, block_table, pos_block = unmask_plan(x, self.config.mask_id, N, self.block_length, self.unmask_schedule)
        times = 1.0 - torch.arange(N, device=device, dtype=torch.float32) / N
        offsets = torch.arange(W, device=device)
        window = x.unsqueeze(0).repeat(W + 1, 1, 1)  # window[i]: the state before slice i; [0] is exact
        pos = torch.zeros(B, dtype=torch.int64, device=device)
        residuals, rounds, rows_evaluated = [], 0, 0
        progress, invalid_seen = [0] * B, False
        bar = _progress(self.config.progress, N)
        while min(progress) < N:
            live, rows, w_idx, b_idx = self._layout(progress, W, device)
            idx = (pos.unsqueeze(0) + offsets.unsqueeze(1)).clamp(max=N - 1).T  # [B, W]
            steps = torch.where(live, idx.T, -1)
            kcount = torch.where(live, k_table.gather(1, idx).T, 0)
            slice_block = torch.where(live, block_table.gather(1, idx).T, -1)
            states, residual, invalid = self._step(
                window[w_idx, b_idx], times[steps[w_idx, b_idx]], rows, steps, window[0], window[1:], seeds,
                kcount, slice_block, pos_block, top_token,
            )
            rounds += 1
            rows_evaluated += len(w_idx)
            residuals.append(residual)
            accept = self._accept(residual, live, L)
            n_live = live.sum(0)
            k = accept.unsqueeze(0) + torch.arange(W + 1, device=device).unsqueeze(1)
            k = torch.where(k <= n_live, k, n_live)  # slots past the window start from the last state
            window = torch.cat([window[:1], states]).gather(0, k.unsqueeze(-1).expand(W + 1, B, L))
            pos = pos + accept
            *progress, invalid_seen = torch.cat([pos, invalid.any().view(1).long()]).tolist()  # the round's one sync
            if invalid_seen:
                w, b = invalid.nonzero()[0].tolist()
                raise ValueError(
                    f"denoiser returned NaN/inf logits (or only -inf) on a row being sampled: sample {b}, step {int(steps[w, b])}"
                )
            bar.update(max(progress) - bar.n)
        bar.close()
        tokens = window[0]
        assert not bool((tokens == self.config.mask_id).any()), "internal error: a mask survived the last step"
        return SampleResult(tokens, rounds, rows_evaluated / B, rounds, residuals, self.exact)


def _progress(enabled: bool, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="MaskGITSampler", unit="step", disable=not enabled, leave=False)
