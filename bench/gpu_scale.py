"""GPU-scale rounds on any machine: the full-logits path against the positions protocol.

The expensive part of a language model's call at sampling shapes is the vocabulary projection
(``Linear(768, 50257)`` for GPT-2 small: a third of its FLOPs at L = 1024, and all of the logits
memory). This benchmark keeps that head real and makes the body cheap: hidden states are an embedding
lookup plus the mean over positions (so a position's logits depend on the rest of the sequence and
Picard needs real iterations). Per round it measures

* logits bytes materialised (``M x V x 4``: ``W B L`` rows for the full path, the packed rows for the
  positions path);
* aten ops dispatched (a ``TorchDispatchMode`` over the run; the native sweep is one op);
* host reads of device data (``_local_scalar_dense``/``nonzero``/``item`` and ``Tensor.tolist``);
* wall time.

The positions path runs whole samples (``PITSampler(window=16)``, L = 1024, N = 1024) at B = 1, 4, 16;
the full path runs its first ``--full-rounds`` rounds only (a full sample would take hours on a CPU)
and, where its logits would not fit in memory, is reported from its shapes without running.

    python -m bench.gpu_scale --out bench/results/gpu-scale-cpu-2026-12-01
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pit_sampler import PITSampler

from .e2e import environment

V, L, H, W, N = 50257, 1024, 768, 16, 1024
READS = {"_local_scalar_dense", "nonzero", "item"}


class HeadModel(torch.nn.Module):
    """Cheap body, real GPT-2-sized head; implements the positions protocol when ``positions``."""

    def __init__(self, positions: bool, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.embed = torch.nn.Parameter(torch.randn(V, H, generator=g) * 0.02, requires_grad=False)
        self.head = torch.nn.Linear(H, V)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(V, H, generator=g) * 0.5)
            self.head.bias.zero_()
        self.supports_positions = positions
        self.mask_id = V - 1

    def body(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed[x]
        return h + 4.0 * h.mean(1, keepdim=True)

    def forward(self, x, t, positions=None):
        h = self.body(x)
        if positions is None:
            return self.head(h)
        return self.head(h.reshape(-1, H)[positions])


class _Counter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        self.reads += func.overloadpacket.__name__ in READS
        return func(*args, **(kwargs or {}))


class _Stop(Exception):
    pass


class _FirstRounds(torch.nn.Module):
    """Wraps a model; stops the run after ``limit`` calls, timing each one."""

    def __init__(self, model, limit: int):
        super().__init__()
        self.model, self.limit, self.calls, self.started = model, limit, 0, None
        self.supports_positions = model.supports_positions

    def forward(self, x, t, positions=None):
        if self.calls == 0:
            self.started = time.perf_counter()
        if self.calls == self.limit:
            raise _Stop
        self.calls += 1
        return self.model(x, t) if positions is None else self.model(x, t, positions=positions)


def _tolist_counter():
    calls = [0]
    original = torch.Tensor.tolist

    def counted(self):
        calls[0] += 1
        return original(self)

    return calls, original, counted


def measure(B: int, positions: bool, full_rounds: int, device="cpu", label: str | None = None, **options) -> dict:
    """One row of the table: ``options`` go to the sampler (``window``, ``cuda_graph``, ...)."""
    model = HeadModel(positions).to(device)
    x = torch.full((B, L), model.mask_id, device=device)
    kw = dict(mask_id=model.mask_id, num_steps=N, vocab_size=V, **{"window": W, **options})
    calls, original, counted = _tolist_counter()
    torch.Tensor.tolist = counted
    counter = _Counter()
    try:
        if positions:
            start = time.perf_counter()
            with counter:
                result = PITSampler(model, **kw).sample(x, seed=0)
            if x.is_cuda:
                torch.cuda.synchronize()
            seconds, rounds, rows = time.perf_counter() - start, result.rounds, result.logits_rows
            extra = dict(windows_used=sorted(set(result.windows)), nfe=result.nfe, polls=result.polls)
        else:
            wrapped = _FirstRounds(model, full_rounds)
            with counter:
                try:
                    PITSampler(wrapped, **kw).sample(x, seed=0)
                except _Stop:
                    pass
            if x.is_cuda:
                torch.cuda.synchronize()
            seconds, rounds, rows = time.perf_counter() - wrapped.started, wrapped.calls, W * B * L
            extra = dict(note=f"first {full_rounds} rounds only (a whole sample would take hours here)")
    finally:
        torch.Tensor.tolist = original
    return dict(B=B, path=label or ("positions" if positions else "full"), rounds=rounds,
                logits_rows_per_round=rows, logits_bytes_per_round=rows * V * 4,
                logits_fraction_of_full=rows / (W * B * L), aten_ops_per_round=counter.ops / rounds,
                host_reads_per_round=(counter.reads + calls[0]) / rounds, seconds_per_round=seconds / rounds, **extra)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--full-rounds", type=int, default=2)
    parser.add_argument("--full-max-gib", type=float, default=6.0, help="largest full-path logits tensor to run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variants", action="store_true",
                        help="also window='auto' and, on CUDA, cuda_graph=True (positions path)")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    device = torch.device(args.device)
    rows = []
    for B in args.batches:
        pos = measure(B, True, args.full_rounds, device)
        rows.append(pos)
        if args.variants:
            rows.append(measure(B, True, args.full_rounds, device, "positions, window=auto", window="auto"))
            if device.type == "cuda":
                rows.append(measure(B, True, args.full_rounds, device, "positions, cuda_graph", cuda_graph=True))
        full_gib = W * B * L * V * 4 / 2**30
        if full_gib <= args.full_max_gib:
            full = measure(B, False, args.full_rounds, device)
        else:
            full = dict(B=B, path="full", logits_rows_per_round=W * B * L, logits_bytes_per_round=W * B * L * V * 4,
                        logits_fraction_of_full=1.0, note=f"not run: {full_gib:.1f} GiB of logits per call")
        rows.append(full)
        if "seconds_per_round" in full:
            pos["speedup_per_round_vs_full"] = full["seconds_per_round"] / pos["seconds_per_round"]
        print(json.dumps(pos), json.dumps(full), sep="\n", flush=True)
    out = dict(environment=environment(device), date=datetime.date.today().isoformat(), shapes=dict(L=L, V=V, W=W, N=N, H=H),
               results=rows)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(out, indent=1))
    Path(f"{args.out}.md").write_text(_table(out))
    print(_table(out))


def _table(out: dict) -> str:
    env = out["environment"]
    lines = [f"GPU-scale rounds, {env.get('device_name', 'cpu')}, {out['date']}: L={L}, V={V}, W={W}, N={N}, "
             f"head Linear({H}, {V}) real, body an embedding lookup.", "",
             "Positions rows run whole samples; the full path its first rounds only.", "",
             "| B | path | rounds | logits rows / round | logits MiB / round | % of full | aten ops / round | host reads / round | s / round |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in out["results"]:
        def f(key, fmt):
            return format(r[key], fmt) if key in r else "—"
        lines.append(f"| {r['B']} | {r['path']} | {f('rounds', 'd')} | {r['logits_rows_per_round']:.0f} | "
                     f"{r['logits_bytes_per_round'] / 2**20:.1f} | {100 * r['logits_fraction_of_full']:.2f} | "
                     f"{f('aten_ops_per_round', '.0f')} | {f('host_reads_per_round', '.2f')} | {f('seconds_per_round', '.3f')} |")
    notes = sorted({r["note"] for r in out["results"] if "note" in r})
    return "\n".join(lines + [""] + [f"- full path: {n}" for n in notes]) + "\n"


if __name__ == "__main__":
    main()
