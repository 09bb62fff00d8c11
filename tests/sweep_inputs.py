"""Random ``sweep`` arguments for the differential tests (``tests/test_fuzz.py``, regression tests).

:func:`random_case` draws one case from a ``random.Random``: sizes, mask position, rule, score
parametrization, options, logits dtype and memory layout, NaN/inf patterns, and ``rows``/``steps``
maps with pass-through (-1) and bad (> N) steps, packed logits ``[M, V]`` read through a random
``[W, B, L]`` row map with repeats and missing (out-of-range) entries, and ``prev`` for ``P <= W``
slices. :func:`sweep_case` builds one window's arguments from a few knobs (the backend-equals-reference
suite, tests/test_backends.py, and the per-backend tests use it), :func:`positional` adds the scalars.
:func:`full_form` maps a full ``[R, L, V]`` output to the packed arguments; :func:`reads`
tells which row-map entries a sweep read. :func:`backends` lists the sweep
implementations that can run here, by name, all with the op's positional signature
``(logits, rows, steps, x0, prev, seeds, cdf, rate, mask_id, temperature, rule, score, argmax_final,
with_counts)``; :func:`assert_same` compares two results exactly.
"""

from __future__ import annotations

import random

import torch

from pit_sampler import noise, ops
from pit_sampler.backends import registry
from pit_sampler.rules import RULES, step_tables
from pit_sampler.schedules import get_schedule, time_grid

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
LAYOUTS = ("contiguous", "padded", "transposed", "offset", "broadcast")
PATTERNS = ("none", "few_neginf", "topk", "block", "row_neginf", "nan_inf", "huge")
# 0: greedy; 1e-30 and 1e-38 scale finite logits past FLT_MAX (invalid rows, banned tokens); 1e30: ~uniform
TEMPERATURES = (0.0, 0.5, 1.0, 2.0, 1e-30, 1e-38, 1e30)
NAMES = ("logits", "rows", "steps", "x0", "prev", "seeds", "cdf", "rate", "mask_id", "temperature", "rule",
         "score", "argmax_final", "with_counts")


def backends(device: torch.device | str = "cpu") -> dict:
    """``name -> sweep function`` of every backend that runs on ``device`` (the reference included)."""
    return {name: registry.implementation(name, "sweep") for name in ops.available_backends(device)}


def layout(values: torch.Tensor, kind: str, rng: random.Random) -> torch.Tensor:
    """Packed ``values`` ``[M, V]`` stored as ``kind``: contiguous, a padded-vocab slice (row stride
    ``V + pad``, rows starting anywhere), transposed (vocab stride ``M``), at a storage offset that is not
    a multiple of 4 elements, or one row broadcast to all ``M`` (row stride 0: every row equals row 0)."""
    M, V = values.shape
    if kind == "contiguous":
        return values.clone()
    if kind == "padded":
        pad = rng.choice([1, 3, 47])
        start = rng.choice([0, 1, 2])
        out = torch.full((M, V + pad + start), 7.0, dtype=values.dtype)[:, start : start + V]
    elif kind == "transposed":
        out = torch.empty((V, M), dtype=values.dtype).t()
    elif kind == "offset":
        off = rng.choice([1, 2, 3, 5])
        out = torch.full((off + M * V,), 7.0, dtype=values.dtype)[off:].view(M, V)
    else:  # "broadcast"
        return values[:1].clone().expand(M, V)
    out.copy_(values)
    return out


def _pattern(logits: torch.Tensor, kind: str, g: torch.Generator) -> None:
    """Write the NaN/inf pattern ``kind`` into float32 ``logits`` ``[M, V]`` in place."""
    M, V = logits.shape
    ninf, nan, inf = float("-inf"), float("nan"), float("inf")
    if kind == "few_neginf":
        logits[torch.rand(M, V, generator=g) < 0.1] = ninf
    elif kind == "topk":  # most tokens -inf, as after top-k filtering
        k = max(1, min(V - 1, int(torch.randint(1, 4, (1,), generator=g))))
        keep = torch.rand(M, V, generator=g).topk(k, dim=1).indices
        out = torch.full_like(logits, ninf)
        out.scatter_(1, keep, logits.gather(1, keep))
        logits.copy_(out)
    elif kind == "block":  # a block of suppressed ids
        lo = int(torch.randint(0, V, (1,), generator=g))
        hi = min(V, lo + max(1, V // 2))
        logits[:, lo:hi] = ninf
    elif kind == "row_neginf":
        logits[torch.rand(M, generator=g) < 0.3] = ninf
    elif kind == "nan_inf":
        rows = (torch.rand(M, generator=g) < 0.3).nonzero(as_tuple=True)[0]
        cols = torch.randint(0, V, (M,), generator=g)[rows]
        vals = torch.where(torch.rand(M, generator=g) < 0.5, nan, inf)[rows]
        logits[rows, cols] = vals
    elif kind == "huge":  # finite logits that overflow once scaled by a small temperature, or in exp
        sel = torch.rand(M, V, generator=g) < 0.2
        big = torch.where(torch.rand(M, V, generator=g) < 0.5, -1.0, 1.0) * 3e4
        logits[sel] = big[sel]


def sweep_case(W: int, B: int, L: int, V: int, N: int, *, rule: str = "first", score: bool = False,
               dtype: torch.dtype = torch.float32, seed: int = 0, mask_id: int | None = None, prompt: float = 0.3,
               passthrough: float = 0.2, final: float = 0.2, bad: float = 0.0, packed: bool = True,
               device: torch.device | str = "cpu") -> dict:
    """The sweep's tensor arguments and ``mask_id`` (a dict in the op's order), for one window.

    Each sample runs consecutive steps from a random start (with probability ``final`` it ends on the
    final fill ``N``); a fraction ``passthrough`` of its slices passes through (step ``-1``), except
    slice 0 of sample 0. ``x0`` has a prompt (the first third of sample 0) and a fraction ``prompt``
    of already unmasked positions; ``prev`` mixes ``x0`` and clean tokens. ``packed``: one logits row
    per live (slice, position) in random order, ``rows = -1`` elsewhere; else a full ``[R, L, V]``
    output with a spare row nobody reads (:func:`full_form`). A fraction ``bad`` of the rows holds a
    NaN, a +inf or only -inf; the mask column is NaN or 7 (never read). Score rates make jump counts
    ``K = 0, 1, 2`` all common."""
    g = torch.Generator().manual_seed(seed)
    mask_id = V // 2 if mask_id is None else mask_id
    tables = step_tables(get_schedule("loglinear"), time_grid(N, "geometric"), rule)
    clean = torch.randint(0, V - 1, (B, L), generator=g)
    clean = clean + (clean >= mask_id).to(torch.int64)  # never the mask
    x0 = torch.where(torch.rand(B, L, generator=g) < prompt, clean, mask_id)
    x0[0, : L // 3] = clean[0, : L // 3]
    steps = torch.empty(W, B, dtype=torch.int64)
    for b in range(B):
        last = float(torch.rand(1, generator=g)) < final
        start = max(0, N + 1 - W) if last else int(torch.randint(0, N + 1, (1,), generator=g))
        run = torch.arange(start, start + W)
        steps[:, b] = torch.where(run > N, -1, run)
    steps = torch.where(torch.rand(W, B, generator=g) < passthrough, -1, steps)
    steps[0, 0] = max(0, min(N, int(steps[0, 0])))
    if packed:
        live = (steps >= 0).unsqueeze(-1).expand(W, B, L)
        rows = torch.full((W, B, L), -1, dtype=torch.int64)
        rows[live] = torch.randperm(int(live.sum()), generator=g)
        logits = torch.randn(int(live.sum()), V, generator=g) * 2.0
    else:
        R = W * B + 1
        full = torch.randn(R, L, V, generator=g) * 2.0
        logits, rows = full_form(full, torch.randperm(R, generator=g)[: W * B].view(W, B))
    M = logits.shape[0]
    for r in (torch.rand(M, generator=g) < bad).nonzero()[:, 0].tolist():
        kind, col = int(torch.randint(0, 3, (1,), generator=g)), int(torch.randint(0, V, (1,), generator=g))
        logits[r, col] = (float("nan"), float("inf"))[kind] if kind < 2 else 0.0
        if kind == 2:
            logits[r] = float("-inf")
    logits[:, mask_id] = torch.where(torch.rand(M, generator=g) < 0.5, float("nan"), 7.0)
    rate = tables.rate
    if score:
        rate = (torch.rand(N + 1, generator=g) * (0.6 if rule == "tweedie" else 2.5) / (V * 7.4)).to(torch.float32)
    prev = torch.where(torch.rand(W, B, L, generator=g) < 0.5, x0.expand(W, B, L), clean.expand(W, B, L))
    seeds = noise.sample_seeds(seed, B)
    case = dict(logits=logits.to(dtype), rows=rows, steps=steps, x0=x0, prev=prev.contiguous(), seeds=seeds,
                cdf=tables.cdf, rate=rate)
    return {**{k: v.to(device) for k, v in case.items()}, "mask_id": mask_id}


def positional(case: dict, temperature: float = 1.0, rule: str = "first", score: bool = False,
               argmax_final: bool = False, with_counts: bool = True) -> tuple:
    """The op's positional arguments from a :func:`sweep_case` and the scalars."""
    return (*case.values(), temperature, RULES.index(rule), score, argmax_final, with_counts)


MISSING = (-1, -(2**40), "M", 2**40)  # row-map entries outside [0, M)


def random_case(rng: random.Random, *, max_w=9, max_b=4, max_l=7, vocab=(2, 3, 5, 37, 130, 1025, 4099)) -> tuple:
    """One random argument tuple of the sweep op (see the module docstring).

    ``logits`` are ``M`` packed rows (``M = 0`` now and then) and ``rows`` a random ``[W, B, L]`` map into
    them with repeats; a fraction of its entries (none in most cases) is ``-1``, ``M`` or ``+-2**40``,
    wherever they fall: where a read happens (a missing row) and where none does (ignored). ``prev``
    covers ``P <= W`` slices."""
    g = torch.Generator().manual_seed(rng.randrange(2**31))
    W, B, L = rng.randint(1, max_w), rng.randint(1, max_b), rng.randint(1, max_l)
    V = rng.choice(vocab)
    mask_id = rng.choice([0, V - 1, V // 2])
    rule = rng.randrange(len(RULES))
    score = rng.random() < 0.35
    N = rng.randint(1, 12)
    tables = step_tables(get_schedule(rng.choice(["loglinear", "cosine"])), time_grid(N, "geometric"), RULES[rule])
    rate = tables.rate
    if score:  # rates that make K = 0, 1, 2 all common; now and then one that overflows lambda
        rate = (torch.rand(N + 1, generator=g) * (0.6 if RULES[rule] == "tweedie" else 2.5) / (V * 7.4)).float()
        if rng.random() < 0.2:
            rate[rng.randrange(N + 1)] = 7e33
    # state: masked, prompt and already-unmasked positions
    clean = torch.randint(0, V - 1, (B, L), generator=g)
    clean = clean + (clean >= mask_id).to(torch.int64)
    x0 = torch.where(torch.rand(B, L, generator=g) < rng.choice([0.0, 0.3]), clean, mask_id)
    # steps: consecutive runs, pass-through (-1), bad (> N, huge), the final step N
    steps = torch.empty(W, B, dtype=torch.int64)
    for b in range(B):
        start = rng.randint(0, N)
        steps[:, b] = torch.arange(start, start + W).clamp(max=N + 1)
        steps[:, b] = torch.where(steps[:, b] > N, -1, steps[:, b])
    for _ in range(rng.choice([0, 0, 1, 3])):
        w, b = rng.randrange(W), rng.randrange(B)
        steps[w, b] = rng.choice([-1, -7, -(2**40), N + 1, N + 3, 2**40])
    # packed rows: M from 0 (every read missing) to more rows than reads; the map repeats rows
    M = 0 if rng.random() < 0.03 else rng.randint(1, W * B * L + 2)
    rows = torch.randint(0, max(M, 1), (W, B, L), generator=g)
    holes = torch.rand(W, B, L, generator=g) < rng.choice([0.0, 0.0, 0.0, 0.05, 0.3])
    if M == 0:
        holes[:] = True
    for i in holes.nonzero().tolist():
        value = rng.choice(MISSING)
        rows[tuple(i)] = M if value == "M" else value
    logits = torch.randn(M, V, generator=g) * rng.choice([1.0, 3.0])
    _pattern(logits, rng.choice(PATTERNS), g)
    dtype = rng.choice(DTYPES)
    logits = layout(logits.to(dtype), rng.choice(LAYOUTS), rng)
    P = rng.choice([W, W, rng.randint(0, W)])
    prev = torch.where(torch.rand(P, B, L, generator=g) < 0.5, x0.expand(P, B, L), clean.expand(P, B, L))
    seeds = noise.sample_seeds(rng.randrange(2**31), B)
    return (logits, rows, steps, x0, prev.contiguous(), seeds, tables.cdf, rate, mask_id,
            rng.choice(TEMPERATURES), rule, score, rng.random() < 0.5, rng.random() < 0.7)


def full_form(logits: torch.Tensor, slice_rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A full denoiser output ``logits [R, L, V]`` with one row per slice (``slice_rows [W, B]``: slice
    ``w`` of sample ``b`` reads ``logits[slice_rows[w, b], l]``) as the packed arguments
    ``(logits.view(R * L, V), rows)`` with ``rows[w, b, l] = slice_rows[w, b] * L + l``."""
    R, L, V = logits.shape
    return logits.view(R * L, V), slice_rows[:, :, None] * L + torch.arange(L, device=slice_rows.device)


def reads(args: tuple, states: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """bool ``[W, B, L]``: which ``rows`` entries a sweep read, from its result (``counts`` with
    ``with_counts``): a live slice's masked positions (score parametrization) or those whose count
    unmasks (mean)."""
    rows, steps, x0, cdf, rule, score = args[1], args[2], args[3], args[6], args[10], args[11]
    N = cdf.shape[0] - 1
    before = torch.cat([x0.unsqueeze(0), states[:-1]])
    live = ((steps >= 0) & (steps <= N)).unsqueeze(-1)
    masked = (before == args[8]) & live
    if score:
        return masked
    return masked & ((counts == 1) if RULES[rule] == "reject" else (counts >= 1))


def describe(args: tuple) -> str:
    """A short description of a case, for failure messages."""
    parts = []
    for name, a in zip(NAMES, args):
        if isinstance(a, torch.Tensor):
            parts.append(f"{name}={tuple(a.shape)}" + (f"/{a.dtype}/{a.stride()}" if name == "logits" else ""))
        else:
            parts.append(f"{name}={a}")
    return " ".join(parts)


def assert_same(got: tuple, want: tuple, what: str = "") -> None:
    """``states``, ``counts``, ``residual``, ``invalid`` equal in dtype, shape and value."""
    for name, a, b in zip(("states", "counts", "residual", "invalid"), got, want):
        assert a.dtype == b.dtype and a.shape == b.shape, (what, name, a.dtype, b.dtype, a.shape, b.shape)
        assert torch.equal(a.cpu(), b.cpu()), (what, name, (a.cpu() != b.cpu()).nonzero()[:5].tolist())
