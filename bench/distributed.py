"""Window parallelism across processes against one process (pit_sampler.distributed).

    torchrun --nproc-per-node 2 -m bench.distributed --out bench/results

Run under ``torchrun`` (gloo on CPUs, NCCL on GPUs). For each setting, best of ``--reps`` wall
times, each after an untimed warm-up, all in this one run: the one-process PIT sampler (rank 0
alone, one thread; and with as many threads as there are ranks, the fair use of the same cores),
the one-process sequential sampler, and :class:`pit_sampler.distributed.WindowParallelPIT` on every
rank (one thread each). Also: rounds (must equal the one-process PIT's), denoiser rows per rank,
bytes each rank sent per round, tokens drawn per round, and the logits bytes that exchanging the
drawn rows instead would move. Tokens are checked identical to the sequential sample.

Settings: the HMM oracle behind the cost network (``bench.models.OracleDenoiser``: exact
conditionals, the compute of a small transformer per call), L = 256, N = 1024, B = 1; the shipped
digits model (float64), L = 64, N = 256, B = 1 and 4.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import time
from pathlib import Path

import torch
import torch.distributed as dist

import pit_sampler as ps
from pit_sampler import distributed

from .e2e import cpu_name
from .models import OracleDenoiser, make_transformer


def settings():
    from pit_sampler.models import digits, load_pretrained
    from pit_sampler.testing import make_oracle

    cost = make_transformer("cost", 256, vocab_size=17)
    hmm = OracleDenoiser(make_oracle("hmm", 0, num_tokens=16, length=256), cost)
    model = load_pretrained("digits")
    out = []
    for W in (16, 32):
        out.append((f"hmm oracle + cost net L=256 N=1024 B=1 W={W}", hmm, torch.full((1, 256), hmm.mask_id),
                    dict(mask_id=hmm.mask_id, num_steps=1024, grid="geometric", vocab_size=hmm.vocab_size), W))
    for B in (1, 4):
        out.append((f"digits L=64 N=256 B={B} W=8", model, torch.full((B, digits.LENGTH), digits.MASK_ID),
                    dict(mask_id=digits.MASK_ID, num_steps=256, vocab_size=digits.VOCAB_SIZE), 8))
    return out


def _best(run, reps: int) -> tuple[float, object]:
    run()  # warm-up
    best, result = float("inf"), None
    for _ in range(reps):
        dist.barrier()
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    return best, result


def _alone(run, reps: int, threads: int):
    """Rank 0 runs ``run`` (one process) while the other ranks wait; ``(seconds, result)`` on rank 0."""
    out = (None, None)
    if dist.get_rank() == 0:
        torch.set_num_threads(threads)
        run()
        best, result = float("inf"), None
        for _ in range(reps):
            start = time.perf_counter()
            result = run()
            best = min(best, time.perf_counter() - start)
        out = (best, result)
        torch.set_num_threads(1)
    dist.barrier()
    return out


def measure(reps: int) -> list[dict]:
    size, rows = dist.get_world_size(), []
    for name, den, x, kw, W in settings():
        pit_1, pit = _alone(lambda: ps.PITSampler(den, window=W, **kw).sample(x, seed=0), reps, 1)
        pit_n, _ = _alone(lambda: ps.PITSampler(den, window=W, **kw).sample(x, seed=0), reps, size)
        seq_1, seq = _alone(lambda: ps.TauLeapingSampler(den, **kw).sample(x, seed=0), reps, 1)
        sampler = distributed.WindowParallelPIT(den, window=W, **kw)
        wp_s, wp = _best(lambda: sampler.sample(x, seed=0), reps)
        per_rank = [None] * size
        dist.all_gather_object(per_rank, dict(seconds=wp_s, rounds=wp.rounds, rows=wp.nfe * x.shape[0],
                                              exchanged=wp.exchanged_bytes, drawn=sampler.drawn_per_round,
                                              logits_bytes=sampler.logits_bytes))
        if dist.get_rank() == 0:
            worst = max(r["seconds"] for r in per_rank)
            rows.append(dict(
                setting=name, ranks=size, identical=bool(torch.equal(wp.tokens, seq.tokens)),
                rounds=wp.rounds, rounds_one_process=pit.rounds, rows_one_process=pit.nfe * x.shape[0],
                per_rank=per_rank, seconds=dict(window_parallel=worst, pit_1thread=pit_1, pit_threads=pit_n,
                                                sequential_1thread=seq_1),
                speedup_vs_pit_1thread=pit_1 / worst, speedup_vs_pit_threads=pit_n / worst,
                speedup_vs_sequential=seq_1 / worst,
                bytes_per_drawn_token=per_rank[0]["exchanged"] / max(per_rank[0]["drawn"], 1e-9)))
            r = rows[-1]
            print(f"{name}: {size} ranks {worst:.2f} s, PIT 1 thread {pit_1:.2f} s ({r['speedup_vs_pit_1thread']:.2f}x), "
                  f"PIT {size} threads {pit_n:.2f} s ({r['speedup_vs_pit_threads']:.2f}x), sequential {seq_1:.2f} s; "
                  f"rounds {wp.rounds} = {pit.rounds}; identical {r['identical']}", flush=True)
    return rows


def markdown(result: dict) -> str:
    env = result["env"]
    lines = [f"# Window parallelism, {result['ranks']} processes vs one, {env['device']}, {env['date']}", "",
             f"{env['backend']} process group, one thread per rank; best of {result['reps']} (one run); "
             f"torch {env['torch']}, commit {env['commit']}. Tokens identical to the sequential sample in every row.", "",
             "| setting | rounds (1 proc = 2 procs) | rows per rank / 1 proc | wall: 2 procs / PIT 1 thread | "
             "vs PIT 2 threads | vs sequential | bytes sent per round | per drawn token | logits bytes instead |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["rows"]:
        share = " / ".join(f"{p['rows']:.0f}" for p in r["per_rank"]) + f" / {r['rows_one_process']:.0f}"
        p0 = r["per_rank"][0]
        lines.append(f"| {r['setting']} | {r['rounds_one_process']} = {r['rounds']} | {share} | "
                     f"{r['speedup_vs_pit_1thread']:.2f}x | {r['speedup_vs_pit_threads']:.2f}x | "
                     f"{r['speedup_vs_sequential']:.2f}x | {p0['exchanged']:.0f} | {r['bytes_per_drawn_token']:.1f} | "
                     f"{p0['logits_bytes']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="torchrun --nproc-per-node N -m bench.distributed")
    parser.add_argument("--out", default=None, help="folder for the JSON and Markdown results")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    distributed.init(timeout_s=600.0)
    torch.set_num_threads(1)
    rows = measure(args.reps)
    if dist.get_rank() == 0:
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{cpu_name()} ({os.cpu_count()} cores)"
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        env = dict(device=device, date=datetime.date.today().isoformat(), torch=torch.__version__, commit=commit,
                   backend=dist.get_backend())
        result = dict(env=env, ranks=dist.get_world_size(), reps=args.reps, rows=rows)
        if args.out:
            kind = "gpu" if torch.cuda.is_available() else "cpu"
            stem = Path(args.out) / f"distributed-{kind}-{env['date']}"
            stem.with_suffix(".json").write_text(json.dumps(result, indent=1))
            stem.with_suffix(".md").write_text(markdown(result))
            print(f"wrote {stem}.json and .md")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
