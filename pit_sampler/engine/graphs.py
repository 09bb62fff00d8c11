"""``cuda_graph=True``: one sampling round captured as a CUDA graph and replayed.

A round (:class:`pit_sampler.engine.round.Round`) has static shapes and no host read, so its
whole launch sequence (denoiser, sweep, slide) can be recorded once per shape and replayed: the
per-round cost on the host becomes one ``cudaGraphLaunch`` instead of a hundred-odd kernel launches.
Replays read their inputs from the captured buffers, so each call copies its tensors in and clones
the outputs out (small: the window states and counters, never logits). The denoiser must be
capturable (no host syncs, no CPU tensors, no data-dependent shapes): true of plain PyTorch models
and of the compiled round.

Every graph of a :class:`GraphedRound` allocates from **one** memory pool (the first capture's): a
replay writes every buffer it reads except its static inputs, which are allocated outside the pool,
and its outputs are cloned before any other graph replays, so graphs may share the memory of their
temporaries whatever the order of replays. A run captures one graph per round shape (window, batch
bucket, budget bucket), never per value: no argument of a round is keyed by a prompt's contents.
"""

from __future__ import annotations

import torch
from torch import Tensor


class GraphedRound:
    """Wraps ``fn(*args)`` (tensors, ``None`` and hashable constants): the first call with a new
    signature (tensor shapes, dtypes and devices; the other arguments by value or identity) warms
    ``fn`` up on a side stream and captures it; every call then replays that graph."""

    def __init__(self, fn, warmup: int = 2):
        self.fn, self.warmup = fn, warmup
        self.graphs: dict[tuple, tuple] = {}
        self.pool = None  # the memory pool every capture shares (module docstring)

    @staticmethod
    def _key(args) -> tuple:
        return tuple((a.shape, a.dtype, a.device) if isinstance(a, Tensor) else
                     (a if isinstance(a, (int, float, type(None))) else id(a)) for a in args)

    def _capture(self, args) -> tuple:
        static = [a.clone() if isinstance(a, Tensor) else a for a in args]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):  # compile, load kernels, grow the allocator outside the capture
                self.fn(*static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self.fn(*static)
        self.pool = self.pool if self.pool is not None else graph.pool()
        return graph, static, out

    def forget(self) -> None:
        """Drop every captured graph (what the round calls changed; the memory pool is kept)."""
        self.graphs = {}

    def __call__(self, *args):
        key = self._key(args)
        if key not in self.graphs:
            self.graphs[key] = self._capture(args)
        graph, static, out = self.graphs[key]
        for dst, src in zip(static, args):
            if isinstance(dst, Tensor):
                dst.copy_(src)
        graph.replay()
        return tuple(t.clone() if isinstance(t, Tensor) else t for t in out)
