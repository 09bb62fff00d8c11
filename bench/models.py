"""Denoisers for the benchmarks (timing stand-ins, not trained models).

* :class:`BenchTransformer`: a bidirectional pre-LN transformer of a named shape
  (:data:`SHAPES`: ``gpt2-small`` 12 layers, d=768, V=50257; ``small`` 4 layers, d=256, V=1024; ``cost``
  2 layers, d=128, the synthetic setting's network cost; ``tiny`` for dry runs) with seeded random
  GPT-2-style weights. Time-agnostic (ignores ``t``), the last token id is the mask.
* :class:`OracleDenoiser`: the exact conditionals of a :mod:`pit_sampler.testing` oracle (the
  synthetic setting), plus one forward pass of a cost network on the same rows, standing in for the
  network call a trained denoiser would make (its output is not used: the oracle decides the tokens).
* :class:`GraphedDenoiser`: replays CUDA graphs of any denoiser, captured once per row bucket, so the
  many small calls of a sampling run are not launch-bound (used for the baseline and for PIT alike).
* :class:`Probe`: counts calls and the largest call, for the logits-memory column.
* :func:`batch_invariance`: whether a denoiser gives the same row whatever batch it is evaluated in
  (what bit-identical PIT needs from the model).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pit_sampler.testing import IndependentOracle, MixtureOracle, Oracle

SHAPES = {
    "gpt2-small": dict(vocab_size=50257, d_model=768, n_layers=12, n_heads=12),
    "small": dict(vocab_size=1024, d_model=256, n_layers=4, n_heads=4),
    "cost": dict(d_model=128, n_layers=2, n_heads=2),
    "tiny": dict(vocab_size=128, d_model=64, n_layers=2, n_heads=2),
}


class _Block(nn.Module):
    """Pre-LN block: non-causal multi-head attention, then a 4x GELU MLP."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, h: Tensor) -> Tensor:
        N, L, d = h.shape
        q, k, v = self.qkv(self.ln1(h)).view(N, L, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(N, L, d)
        h = h + self.proj(a)
        return h + self.out(F.gelu(self.fc(self.ln2(h)), approximate="tanh"))


class BenchTransformer(nn.Module):
    """Bidirectional transformer denoiser ``(x [N, L], t [N]) -> logits [N, L, V]`` in the model's dtype.

    Learned positions up to ``max_len``, tied embedding/LM head, GPT-2 initialisation (normal(0, 0.02),
    residual projections scaled by ``1/sqrt(2 n_layers)``) drawn from a CPU generator seeded with
    ``seed``, so every device gets the same weights. ``mask_id = vocab_size - 1``.
    """

    def __init__(self, vocab_size: int, d_model: int, n_layers: int, n_heads: int, max_len: int, seed: int = 0):
        super().__init__()
        self.vocab_size, self.mask_id = vocab_size, vocab_size - 1
        self.emb = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Parameter(torch.empty(max_len, d_model))
        self.blocks = nn.ModuleList(_Block(d_model, n_heads) for _ in range(n_layers))
        self.ln = nn.LayerNorm(d_model)
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if p.dim() == 1:
                    p.fill_(1.0 if name.endswith("weight") else 0.0)  # LayerNorm gains; all biases 0
                else:
                    std = 0.02 / math.sqrt(2 * n_layers) if name.endswith(("proj.weight", "out.weight")) else 0.02
                    p.normal_(0.0, std, generator=g)

    def forward(self, x: Tensor, t: Tensor | None = None) -> Tensor:
        h = self.emb(x) + self.pos[: x.shape[1]]
        for block in self.blocks:
            h = block(h)
        return self.ln(h) @ self.emb.weight.T


def make_transformer(shape: str, max_len: int, *, vocab_size: int | None = None, dtype=torch.float32, device="cpu", seed: int = 0):
    """A :class:`BenchTransformer` of a named shape from :data:`SHAPES` (``vocab_size`` overrides the shape's),
    in eval mode with gradients off, on ``device`` in ``dtype``."""
    kw = dict(SHAPES[shape])
    if vocab_size is not None:
        kw["vocab_size"] = vocab_size
    model = BenchTransformer(max_len=max_len, seed=seed, **kw)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)


class OracleDenoiser:
    """Logits of an oracle's exact conditionals (float32, ``-inf`` on the mask column), after running
    ``cost_model`` on the same rows (the compute a network call would take; its output is not used).

    Independent and mixture oracles are evaluated on the input's device (their parameters are copied
    there); others (the HMM's forward-backward) through the oracle's own CPU path.
    """

    def __init__(self, oracle: Oracle, cost_model: nn.Module | None = None, device="cpu"):
        self.cost_model, self.mask_id, self.vocab_size = cost_model, oracle.mask_id, oracle.vocab_size
        self.on_device = isinstance(oracle, (IndependentOracle, MixtureOracle))
        if self.on_device:
            oracle = copy.copy(oracle)
            for name, value in vars(oracle).items():
                if isinstance(value, Tensor):
                    setattr(oracle, name, value.to(device))
        self.oracle = oracle

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        if self.cost_model is not None:
            self.cost_model(x, t)
        if not self.on_device:
            return self.oracle(x, t)
        logp = torch.log(self.oracle.conditionals(x)).to(torch.float32)
        return F.pad(logp, (0, 1), value=float("-inf"))


def row_buckets(max_rows: int) -> list[int]:
    """Row counts a :class:`GraphedDenoiser` captures: 1, 2, 3, 4, 6, 8, 12, ... up to ``max_rows``
    (powers of two and their 1.5 multiples, so padding wastes at most a third of a call)."""
    sizes, p = set(), 1
    while p < max_rows:
        sizes.update({p, p + p // 2})
        p *= 2
    return sorted(s for s in sizes if s < max_rows) + [max_rows]


class GraphedDenoiser:
    """Wraps a CUDA denoiser: a call with ``R`` rows copies them into the static input of the smallest
    captured bucket ``>= R`` (see :func:`row_buckets`), replays that bucket's CUDA graph and returns the
    first ``R`` rows of its static output. Graphs are captured on first use and share one memory pool;
    the returned logits are valid until the next call (the samplers consume them before that).
    If a capture fails, every call falls back to the eager denoiser and ``error`` says why.
    """

    def __init__(self, fn, length: int, max_rows: int, pad_id: int, device):
        self.fn, self.length, self.pad_id, self.device = fn, length, pad_id, torch.device(device)
        self.buckets = row_buckets(max_rows)
        self.pool = torch.cuda.graph_pool_handle()
        self.graphs: dict[int, tuple] = {}
        self.error: str | None = None

    def _capture(self, rows: int):
        x = torch.full((rows, self.length), self.pad_id, dtype=torch.int64, device=self.device)
        t = torch.ones(rows, dtype=torch.float32, device=self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # library handles, workspaces and autotuning outside the capture
                self.fn(x, t)
        torch.cuda.current_stream(self.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self.fn(x, t)
        return graph, x, t, out

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        if self.error is not None:
            return self.fn(x, t)
        R = x.shape[0]
        bucket = next((b for b in self.buckets if b >= R), None)
        if bucket is None:
            raise ValueError(f"GraphedDenoiser got {R} rows, more than its largest bucket {self.buckets[-1]}")
        if bucket not in self.graphs:
            try:
                self.graphs[bucket] = self._capture(bucket)
            except Exception as exc:  # noqa: BLE001 -- any capture failure means: run eagerly
                self.error = f"{type(exc).__name__}: {exc}"
                self.graphs.clear()
                return self.fn(x, t)
        graph, static_x, static_t, out = self.graphs[bucket]
        static_x[:R].copy_(x)
        static_t[:R].copy_(t)
        graph.replay()
        return out[:R]


class Probe:
    """Calls ``fn`` and records ``calls`` and ``max_rows`` (the largest logits tensor is ``max_rows x L x V``)."""

    def __init__(self, fn):
        self.fn, self.calls, self.max_rows = fn, 0, 0

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        self.max_rows = max(self.max_rows, x.shape[0])
        return self.fn(x, t)


@torch.no_grad()
def batch_invariance(denoiser, vocab_size: int, length: int, rows: int, device, seed: int = 0) -> dict:
    """Evaluate ``rows >= 5`` random half-masked rows all at once, then rows 0 and 1 alone and rows 2-4 as a
    batch of 3, and compare those five rows.

    Returns ``{"bitwise": bool, "max_abs_diff": float, "argmax_agreement": float}`` (the share of
    positions whose argmax token is the same in both evaluations).
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab_size - 1, (rows, length), generator=g)
    x = torch.where(torch.rand(rows, length, generator=g) < 0.5, vocab_size - 1, x).to(device)
    t = torch.full((rows,), 0.5, device=device)
    full = denoiser(x, t).float().clone()
    parts = [denoiser(x[i : i + 1], t[i : i + 1]).float().clone() for i in range(min(rows, 2))]
    parts.append(denoiser(x[2:5], t[2:5]).float().clone())
    split = torch.cat(parts)
    ref = full[: split.shape[0]]
    finite = torch.isfinite(ref) & torch.isfinite(split)
    diff = (ref - split).abs().where(finite, 0.0)
    return {
        "bitwise": bool(torch.equal(ref, split)),
        "max_abs_diff": float(diff.max()),
        "argmax_agreement": float((ref.argmax(-1) == split.argmax(-1)).float().mean()),
    }
