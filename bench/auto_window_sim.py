"""``window="auto"`` on simulated devices: the real samplers and models, a modelled clock.

Each denoiser call advances a simulated clock by a cost model ``c(rows)`` (in units of one row's
cost) instead of taking wall time, and the samplers' timer reads that clock, so the policy sees
exactly the modelled cost. The acceptance, and the tokens, are the real ones. Results are
deterministic and the same on any machine; optional log-normal noise per call (``--noise``, seeded)
stands in for a shared machine's jitter. Cost models:

* ``linear``: ``r`` (a compute-bound CPU);
* ``linear+0.3``: ``0.3 + r`` (a fixed cost per call on top);
* ``half``: ``1 + r / 2``;
* ``knee8``: ``max(1, r / 8)`` (flat up to 8 rows, then compute-bound);
* ``latency64``: ``max(1, r / 64)`` (a GPU at a small batch).

For each exact oracle setting and cost model it reports sequential's rounds, the best fixed window's
speed-up over sequential (simulated time), and ``window="auto"``'s: a fresh sampler, and a warm one
(its second run). Tokens are checked equal to sequential's in every run.

    python -m bench.auto_window_sim --out bench/results/auto-window-sim-2026-12-02
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import random
from pathlib import Path

import torch

from pit_sampler import PITSampler, TauLeapingSampler
from pit_sampler.testing import make_oracle

COSTS = {
    "linear": lambda r: float(r),
    "linear+0.3": lambda r: 0.3 + r,
    "half": lambda r: 1.0 + r / 2,
    "knee8": lambda r: max(1.0, r / 8),
    "latency64": lambda r: max(1.0, r / 64),
}
FIXED = (1, 2, 4, 8, 16, 32, 64)
SETTINGS = {  # name: (oracle, length, num_steps, grid)
    "hmm L=256": ("hmm", 256, 1024, "geometric"),
    "mixture L=256": ("mixture", 256, 1024, "uniform"),
    "hmm L=128": ("hmm", 128, 512, "geometric"),
    "mixture L=128": ("mixture", 128, 512, "uniform"),
}


class SimulatedDevice:
    """A denoiser whose calls cost ``cost(rows)`` on :attr:`clock` (times a seeded log-normal factor
    of spread ``noise``) instead of wall time."""

    def __init__(self, denoiser, cost, noise: float = 0.0, seed: int = 0):
        self.denoiser, self.cost, self.noise = denoiser, cost, noise
        self.mask_id, self.vocab_size = denoiser.mask_id, denoiser.vocab_size
        self.rng, self.clock = random.Random(seed), 0.0

    def __call__(self, x, t):
        self.clock += self.cost(x.shape[0]) * (math.exp(self.rng.gauss(0.0, self.noise)) if self.noise else 1.0)
        return self.denoiser(x, t)

    def timed(self, sampler, x):
        """``(simulated seconds, result)`` of ``sampler.sample(x)``, the sampler's timer on the clock."""
        start = self.clock
        sampler.engine.clock = lambda: self.clock
        result = sampler.sample(x, seed=0)
        return self.clock - start, result


def evaluate(setting: str, cost: str, noise: float, seed: int) -> dict:
    name, length, steps, grid = SETTINGS[setting]
    oracle = make_oracle(name, 0, num_tokens=16, length=length)
    device = SimulatedDevice(oracle, COSTS[cost], noise, seed)
    kw = dict(mask_id=oracle.mask_id, num_steps=steps, grid=grid, vocab_size=oracle.vocab_size)
    x = torch.full((1, length), oracle.mask_id)
    seq_time, seq = device.timed(TauLeapingSampler(device, **kw), x)
    fixed = {}
    for w in FIXED:
        t, r = device.timed(PITSampler(device, window=w, **kw), x)
        assert torch.equal(r.tokens, seq.tokens), (setting, cost, w)
        fixed[w] = seq_time / t
    fresh_time, fresh = device.timed(PITSampler(device, **kw), x)
    warm = PITSampler(device, **kw)
    device.timed(warm, x)
    warm_time, warmed = device.timed(warm, x)
    assert torch.equal(fresh.tokens, seq.tokens) and torch.equal(warmed.tokens, seq.tokens), (setting, cost)
    best = max(fixed, key=fixed.get)
    return {"setting": setting, "cost": cost, "seed": seed, "sequential_rounds": seq.rounds, "fixed": fixed,
            "best_fixed": {"window": best, "speedup": fixed[best]},
            "auto": {"speedup": seq_time / fresh_time, "rounds": fresh.rounds, "windows": fresh.windows},
            "auto (warm)": {"speedup": seq_time / warm_time, "rounds": warmed.rounds, "windows": warmed.windows}}


def row_text(e: dict) -> str:
    best = e["best_fixed"]
    top = max(1.0, best["speedup"])
    return (f"| {e['setting']} | {e['cost']} | {e['seed']} | {e['sequential_rounds']} | "
            f"{best['speedup']:.2f}x (W={best['window']}) | {e['auto']['speedup']:.2f}x ({e['auto']['speedup'] / top:.2f}) | "
            f"{e['auto (warm)']['speedup']:.2f}x ({e['auto (warm)']['speedup'] / top:.2f}) |")


def markdown(result: dict) -> str:
    rows = result["rows"]
    ratio = {k: min(e[k]["speedup"] / max(1.0, e["best_fixed"]["speedup"]) for e in rows) for k in ("auto", "auto (warm)")}
    head = (f"# window=\"auto\" on simulated devices, {result['date']}\n\n"
            f"Simulated-time speed-up over sequential (`python -m bench.auto_window_sim`, noise {result['noise']}); "
            "in brackets, over max(1, best fixed W). Tokens identical in every run.\n\n"
            "| setting | cost | noise seed | seq rounds | best fixed W | auto (fresh) | auto (warm) |\n"
            "|---|---|---|---|---|---|---|\n")
    tail = (f"\nWorst over all rows: fresh {ratio['auto']:.2f}, warm {ratio['auto (warm)']:.2f} of max(1, best fixed); "
            f"slowest fresh {min(e['auto']['speedup'] for e in rows):.2f}x and warm "
            f"{min(e['auto (warm)']['speedup'] for e in rows):.2f}x sequential.\n")
    return head + "\n".join(row_text(e) for e in rows) + "\n" + tail


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="path prefix: writes <out>.json and <out>.md")
    parser.add_argument("--noise", type=float, default=0.0, help="log-normal spread of each call's cost")
    parser.add_argument("--seeds", type=int, default=1, help="noise seeds per setting and cost")
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--costs", nargs="*", default=list(COSTS), choices=list(COSTS))
    args = parser.parse_args(argv)
    rows = []
    for setting in args.settings:
        for cost in args.costs:
            for seed in range(args.seeds):
                rows.append(evaluate(setting, cost, args.noise, seed))
                print(row_text(rows[-1]), flush=True)
    result = {"date": datetime.date.today().isoformat(), "noise": args.noise, "rows": rows}
    Path(f"{args.out}.json").write_text(json.dumps(result, indent=1))
    Path(f"{args.out}.md").write_text(markdown(result))


if __name__ == "__main__":
    main()
