"""The sampler's own cost against the batch size: sequential tau-leaping on a trivial oracle.

The model is an independent-token oracle (a table lookup: nearly free), so the time is the loop's:
planning, rounds, polls, compaction of finished samples. That cost should grow linearly in ``B``
(the previous loop's compaction was quadratic: B = 16,000 took 42x B = 2,000). Reported: seconds per
run (median of ``--reps``, interleaved sizes), and each size's time relative to the smallest
multiplied by ``B_min / B`` (1.0: linear).

    python -m bench.batch_scaling --out bench/results/batch-scaling-cpu-2026-12-06
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path

import torch

from pit_sampler import TauLeapingSampler
from pit_sampler.testing import make_oracle

from .e2e import cpu_name


def run(sizes: list[int], length: int, steps: int, reps: int) -> dict:
    oracle = make_oracle("independent", seed=0, num_tokens=8, length=length)
    kw = dict(mask_id=oracle.mask_id, num_steps=steps, vocab_size=oracle.vocab_size, grid="uniform")
    sampler = TauLeapingSampler(oracle, **kw)
    sampler.sample(torch.full((8, length), oracle.mask_id), seed=0)  # warm-up
    times = {B: [] for B in sizes}
    rounds = {}
    for rep in range(reps):
        for B in sizes if rep % 2 == 0 else sizes[::-1]:
            x = torch.full((B, length), oracle.mask_id)
            start = time.perf_counter()
            out = sampler.sample(x, seed=rep)
            times[B].append(time.perf_counter() - start)
            rounds[B] = out.rounds
    base = sizes[0]
    median = {B: statistics.median(t) for B, t in times.items()}
    return {"date": datetime.date.today().isoformat(), "device": cpu_name(), "threads": torch.get_num_threads(),
            "length": length, "num_steps": steps, "reps": reps,
            "rows": [{"B": B, "seconds": median[B], "min": min(times[B]), "max": max(times[B]), "rounds": rounds[B],
                      "ratio_to_smallest": median[B] / median[base],
                      "linearity": median[B] / median[base] * base / B} for B in sizes]}


def markdown(result: dict) -> str:
    head = (f"# Sequential sampling cost against batch size, {result['date']}\n\n{result['device']}, "
            f"{result['threads']} threads; independent-token oracle (a table lookup), L={result['length']}, "
            f"N={result['num_steps']}, median of {result['reps']} interleaved runs "
            "(`python -m bench.batch_scaling`).\n\n| B | seconds (median) | range | rounds | x smallest B | "
            "linearity (1 = linear) |\n|---|---|---|---|---|---|\n")
    return head + "\n".join(f"| {r['B']} | {r['seconds']:.3f} | {r['min']:.3f}-{r['max']:.3f} | {r['rounds']} | "
                            f"{r['ratio_to_smallest']:.1f}x | {r['linearity']:.2f} |" for r in result["rows"]) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="path prefix: writes <out>.json and <out>.md")
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 4000, 8000, 16000, 20000])
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=128)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(sorted(args.sizes), args.length, args.steps, args.reps)
    text = markdown(result)
    print(text)
    if args.out:
        Path(f"{args.out}.json").write_text(json.dumps(result, indent=1))
        Path(f"{args.out}.md").write_text(text)


if __name__ == "__main__":
    main()
