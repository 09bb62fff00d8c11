"""Random ``sweep`` arguments for the differential tests (``tests/test_fuzz.py``, regression tests).

:func:`random_case` draws one case from a ``random.Random``: sizes, mask position, rule, score
parametrization, options, logits dtype and memory layout, NaN/inf patterns, and ``rows``/``steps``
maps with pass-through (-1), bad (out-of-range) and garbage entries. :func:`backends` lists the sweep
implementations that can run here, by name, all with the op's positional signature
``(logits, rows, steps, x0, prev, seeds, cdf, rate, mask_id, temperature, rule, score, argmax_final,
with_counts)``; :func:`assert_same` compares two results exactly.
"""

from __future__ import annotations

import random

import torch

from pit_sampler import noise, ops, reference
from pit_sampler.rules import RULES, step_tables
from pit_sampler.schedules import get_schedule, time_grid

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
LAYOUTS = ("contiguous", "padded", "transposed", "offset")
PATTERNS = ("none", "few_neginf", "topk", "block", "row_neginf", "nan_inf", "huge")
# 0: greedy; 1e-30 and 1e-38 scale finite logits past FLT_MAX (invalid rows, banned tokens); 1e30: ~uniform
TEMPERATURES = (0.0, 0.5, 1.0, 2.0, 1e-30, 1e-38, 1e30)
NAMES = ("logits", "rows", "steps", "x0", "prev", "seeds", "cdf", "rate", "mask_id", "temperature", "rule",
         "score", "argmax_final", "with_counts")


def backends(device: torch.device | str = "cpu") -> dict:
    """``name -> sweep function`` of every backend that runs on ``device`` (the reference included)."""
    out = {"reference": reference.sweep}
    available = ops.available_backends(device)
    if "native" in available:
        from pit_sampler.backends import native

        out["native"] = native._sweep
    if "triton" in available:
        from pit_sampler.triton_kernels import sweep as triton_sweep

        out["triton"] = triton_sweep.sweep
    return out


def layout(values: torch.Tensor, kind: str, rng: random.Random) -> torch.Tensor:
    """``values`` ``[R, L, V]`` stored as ``kind``: contiguous, a padded-vocab slice, transposed
    (vocab stride ``L``), or at a storage offset that is not a multiple of 4 elements."""
    R, L, V = values.shape
    if kind == "contiguous":
        return values.clone()
    if kind == "padded":
        pad = rng.choice([1, 3, 47])
        start = rng.choice([0, 1, 2])
        base = torch.full((R, L, V + pad + start), 7.0, dtype=values.dtype)
        out = base[:, :, start : start + V]
    elif kind == "transposed":
        out = torch.empty((R, V, L), dtype=values.dtype).transpose(1, 2)
    else:
        off = rng.choice([1, 2, 3, 5])
        flat = torch.full((off + R * L * V,), 7.0, dtype=values.dtype)
        out = flat[off:].view(R, L, V)
    out.copy_(values)
    return out


def _pattern(logits: torch.Tensor, kind: str, mask_id: int, g: torch.Generator) -> None:
    """Write the NaN/inf pattern ``kind`` into float32 ``logits`` ``[R, L, V]`` in place."""
    R, L, V = logits.shape
    ninf, nan, inf = float("-inf"), float("nan"), float("inf")
    if kind == "few_neginf":
        logits[torch.rand(R, L, V, generator=g) < 0.1] = ninf
    elif kind == "topk":  # most tokens -inf, as after top-k filtering
        k = max(1, min(V - 1, int(torch.randint(1, 4, (1,), generator=g))))
        keep = torch.rand(R, L, V, generator=g).topk(k, dim=2).indices
        out = torch.full_like(logits, ninf)
        out.scatter_(2, keep, logits.gather(2, keep))
        logits.copy_(out)
    elif kind == "block":  # a block of suppressed ids
        lo = int(torch.randint(0, V, (1,), generator=g))
        hi = min(V, lo + max(1, V // 2))
        logits[:, :, lo:hi] = ninf
    elif kind == "row_neginf":
        logits[torch.rand(R, L, generator=g) < 0.3] = ninf
    elif kind == "nan_inf":
        rows = torch.rand(R, L, generator=g) < 0.3
        cols = torch.randint(0, V, (R, L), generator=g)
        vals = torch.where(torch.rand(R, L, generator=g) < 0.5, nan, inf)
        r, l = rows.nonzero(as_tuple=True)
        logits[r, l, cols[r, l]] = vals[r, l]
    elif kind == "huge":  # finite logits that overflow once scaled by a small temperature, or in exp
        sel = torch.rand(R, L, V, generator=g) < 0.2
        big = torch.where(torch.rand(R, L, V, generator=g) < 0.5, -1.0, 1.0) * 3e4
        logits[sel] = big[sel]


def random_case(rng: random.Random, *, max_w=9, max_b=4, max_l=7, vocab=(2, 3, 5, 37, 130, 1025, 4099)) -> tuple:
    """One random argument tuple of the sweep op (see the module docstring)."""
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
    R = rng.randint(1, W * B + 1)
    rows = torch.randint(0, R, (W, B), generator=g)
    for _ in range(rng.choice([0, 0, 1, 3])):
        w, b = rng.randrange(W), rng.randrange(B)
        kind = rng.choice(["pass", "step>N", "step=2**40", "row=-1", "row=R", "row=2**40", "pass+garbage row"])
        if kind == "pass":
            steps[w, b] = rng.choice([-1, -7, -(2**40)])
        elif kind == "step>N":
            steps[w, b] = N + rng.randint(1, 3)
        elif kind == "step=2**40":
            steps[w, b] = 2**40
        elif kind == "row=-1":
            rows[w, b] = -1
        elif kind == "row=R":
            rows[w, b] = R
        elif kind == "row=2**40":
            rows[w, b] = 2**40
        else:
            steps[w, b], rows[w, b] = -1, rng.choice([-1, 2**40])
    logits = torch.randn(R, L, V, generator=g) * rng.choice([1.0, 3.0])
    _pattern(logits, rng.choice(PATTERNS), mask_id, g)
    dtype = rng.choice(DTYPES)
    logits = layout(logits.to(dtype), rng.choice(LAYOUTS), rng)
    prev = torch.where(torch.rand(W, B, L, generator=g) < 0.5, x0.expand(W, B, L), clean.expand(W, B, L))
    seeds = noise.sample_seeds(rng.randrange(2**31), B)
    return (logits, rows, steps, x0, prev.contiguous(), seeds, tables.cdf, rate, mask_id,
            rng.choice(TEMPERATURES), rule, score, rng.random() < 0.5, rng.random() < 0.7)


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
