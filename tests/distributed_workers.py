"""The per-rank programs of tests/test_distributed.py (spawned processes, gloo on the CPU).

Each worker joins a process group of ``size`` ranks over TCP on ``port``, runs one scenario and
saves what it saw (tokens, counters, or the error it raised) to ``out/rank{r}.pt`` for the test to
compare with a one-process run.
"""
from __future__ import annotations

import datetime
import os
import traceback

import torch
import torch.distributed as dist

import pit_sampler as ps
from pit_sampler import distributed
from pit_sampler.testing import Gathered, make_oracle

RULES = ("reject", "first", "tweedie")
STEPS = 64


def oracle():
    return make_oracle("hmm", seed=2, num_tokens=6, length=13)


def x_init(batch: int = 5):
    o = oracle()
    x = torch.full((batch, o.length), o.mask_id)
    x[0, :3] = torch.tensor([1, 2, 3])  # a prompt
    x[min(2, batch - 1), 4:9:2] = 0
    return x


def seeds(batch: int = 5):
    return torch.tensor([11, -3, 2**40, 7, 0, 5, 9][:batch], dtype=torch.int64)


class VocabParallelModel(torch.nn.Module):
    """A tiny bidirectional model whose output head is split over the vocabulary across ranks
    (Megatron's vocab-parallel head): rank ``r`` computes the logits of its vocabulary rows and
    all-gathers the rest. ``parts = 1`` is the unsplit model on one process."""

    def __init__(self, vocab: int, length: int, parts: int = 1, part: int = 0, width: int = 16):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = torch.randn(vocab, width, generator=g, dtype=torch.float64)
        self.pos = torch.randn(length, width, generator=g, dtype=torch.float64)
        head = torch.randn(vocab, width, generator=g, dtype=torch.float64)
        self.bounds = [distributed.shard(vocab, r, parts) for r in range(parts)]
        self.head, self.parts = head[self.bounds[part]], parts

    def forward(self, x, t):
        h = self.emb[x] + self.pos
        h = h + h.mean(1, keepdim=True)  # every position sees the whole row
        local = (h.unsqueeze(-2) * self.head).sum(-1)  # [N, L, V / parts]: one dot product per logit
        if self.parts > 1:  # gloo gathers equal sizes: pad each part to the largest
            width = max(b.stop - b.start for b in self.bounds)
            padded = torch.nn.functional.pad(local, (0, width - local.shape[-1]))
            pieces = [torch.empty_like(padded) for _ in self.bounds]
            dist.all_gather(pieces, padded.contiguous())
            local = torch.cat([p[..., : b.stop - b.start] for p, b in zip(pieces, self.bounds)], -1)
        return local.float()


def _join(rank: int, size: int, port: int, timeout_s: float = 30.0) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size,
                            timeout=datetime.timedelta(seconds=timeout_s))


def _save(out: str, rank: int, value) -> None:
    torch.save(value, os.path.join(out, f"rank{rank}.pt"))


def batch_and_tensor_parallel(rank: int, size: int, port: int, out: str) -> None:
    """Batch parallel for every rule (int seed and seed tensor); a vocab-parallel model run by every
    rank with the same inputs."""
    _join(rank, size, port)
    o, saved = oracle(), {}
    for rule in RULES:
        kw = dict(mask_id=o.mask_id, num_steps=STEPS, rule=rule)
        for name, sampler in (("seq", ps.TauLeapingSampler(o, **kw)), ("pit", ps.PITSampler(o, window=4, **kw))):
            tokens, local = distributed.sample_batch(sampler, x_init(), seed=5)
            saved[f"batch-{rule}-{name}"] = tokens
            saved[f"local-{rule}-{name}"] = local.tokens.shape[0]
            tokens, _ = distributed.sample_batch(sampler, x_init(), seed=seeds())
            saved[f"batch-seeds-{rule}-{name}"] = tokens
    model = VocabParallelModel(o.vocab_size, o.length, parts=size, part=rank).eval()
    kw = dict(mask_id=o.mask_id, num_steps=STEPS, vocab_size=o.vocab_size)
    saved["tp-seq"] = ps.TauLeapingSampler(model, **kw).sample(x_init(), seed=seeds()).tokens
    saved["tp-pit"] = ps.PITSampler(model, window=8, **kw).sample(x_init(), seed=seeds()).tokens
    _save(out, rank, saved)
    dist.destroy_process_group()


def window_parallel(rank: int, size: int, port: int, out: str) -> None:
    """Window parallel, plain and positions-protocol denoisers, every rule, prompts, seed tensor."""
    _join(rank, size, port)
    o, saved = oracle(), {}
    for rule in RULES:
        kw = dict(mask_id=o.mask_id, num_steps=STEPS, rule=rule, window=8)
        for name, den in (("plain", o), ("positions", Gathered(o))):
            r = distributed.WindowParallelPIT(den, **kw).sample(x_init(), seed=seeds())
            saved[f"{rule}-{name}"] = dict(tokens=r.tokens, rounds=r.rounds, nfe=r.nfe, exchanged=r.exchanged_bytes,
                                           logits_rows=r.logits_rows, windows=r.windows)
    _save(out, rank, saved)
    dist.destroy_process_group()


class _FailsOnRank:
    """The oracle, except that rank ``bad`` raises on its ``call``-th call."""

    def __init__(self, bad: int, call: int):
        self.o, self.bad, self.call, self.calls = oracle(), bad, call, 0

    def __call__(self, x, t):
        self.calls += 1
        if dist.get_rank() == self.bad and self.calls == self.call:
            raise ValueError("the model broke")
        return self.o(x, t)


def failures(rank: int, size: int, port: int, out: str) -> None:
    """A rank that raises mid-run (window and batch parallel), and ranks that disagree on the seed:
    every rank must raise a clear error, none may hang."""
    _join(rank, size, port, timeout_s=20.0)
    o, saved = oracle(), {}
    kw = dict(mask_id=o.mask_id, num_steps=STEPS)
    scenarios = {
        "window-raise": lambda: distributed.WindowParallelPIT(_FailsOnRank(1, 3), window=8, **kw).sample(x_init()),
        "batch-raise": lambda: distributed.sample_batch(ps.PITSampler(_FailsOnRank(0, 2), window=4, **kw), x_init()),
        "seed-mismatch": lambda: distributed.WindowParallelPIT(o, window=8, **kw).sample(x_init(), seed=rank),
        "window-mismatch": lambda: distributed.sample_batch(ps.PITSampler(o, window=4 + rank, **kw), x_init()),
    }
    for name, run in scenarios.items():
        try:
            run()
            saved[name] = None
        except Exception as err:
            saved[name] = f"{type(err).__name__}: {err}"
        dist.barrier()
    _save(out, rank, saved)
    dist.destroy_process_group()


def main(rank: int, scenario: str, size: int, port: int, out: str) -> None:
    try:
        globals()[scenario](rank, size, port, out)
    except BaseException:
        with open(os.path.join(out, f"rank{rank}.err"), "w") as f:
            f.write(traceback.format_exc())
        raise
