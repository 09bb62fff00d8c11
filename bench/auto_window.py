"""``window="auto"`` against sequential tau-leaping and every fixed window, on this machine.

For each setting it times ``--reps`` runs of the sequential baseline, ``PITSampler`` at fixed
windows and ``window="auto"`` (a fresh sampler per run, so nothing is learned from an earlier run; a
second "auto (warm)" row reuses one sampler after one untimed run, as a user calling ``sample()``
repeatedly would), all from the same seed, and checks that every run's tokens equal the baseline's.
The runs are interleaved (each repetition runs every configuration once, in alternating order), so a
machine whose speed drifts affects all of them alike. Wall-time ratios within one run are the result
(absolute times are not comparable across machines): per repetition, sequential time over auto time
(paired, median and range), and the best times' ratio. Each run also times its calls of the network,
so the time the sampler spends outside it per round (sampling, bookkeeping, the window policy) is
measured directly, free of the network's own noise.

Settings (the grids of the committed results, named since the default became ``cosine``): the demo's
digits model (64 samples, N = 256, geometric); the small random transformer of
:mod:`bench.models` at L = 256, B = 1 and 4 (N = 128, geometric); the mixture and HMM oracles at
L = 256 with a transformer's forward pass as each call's cost (N = 1024), as in :mod:`bench.e2e`.

    python -m bench.auto_window --threads 2 --reps 9 --out bench/results/auto-window-cpu-2026-12-02
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
import time
from pathlib import Path

import torch

from pit_sampler import PITSampler, TauLeapingSampler
from pit_sampler.testing import make_oracle

from .e2e import environment
from .models import OracleDenoiser, make_transformer

FIXED = {"digits": (2, 4, 8), "transformer": (2, 4, 8, 16), "oracle": (4, 8, 16, 32)}


def settings():
    """``(name, kind, denoiser, x_init, sampler kwargs)`` of every setting (``kind`` keys :data:`FIXED`,
    the fixed windows compared: around each setting's best window in the CPU end-to-end results)."""
    from pit_sampler.models import digits
    from pit_sampler.models import load_pretrained

    small = make_transformer("small", 256)
    cost = make_transformer("cost", 256, vocab_size=17)
    out = [("digits demo (B=64, N=256)", "digits", load_pretrained("digits"),
            torch.full((64, digits.LENGTH), digits.MASK_ID), dict(mask_id=digits.MASK_ID, num_steps=256,
                                                                    vocab_size=digits.VOCAB_SIZE, grid="geometric"))]
    for b in (1, 4):
        out.append((f"small transformer L=256 B={b} (N=128)", "transformer", small, torch.full((b, 256), small.mask_id),
                    dict(mask_id=small.mask_id, num_steps=128, vocab_size=small.vocab_size, grid="geometric")))
    for name, grid in (("mixture", "uniform"), ("hmm", "geometric")):
        den = OracleDenoiser(make_oracle(name, 0, num_tokens=16, length=256), cost)
        out.append((f"{name} oracle + cost net L=256 (N=1024, {grid})", "oracle", den, torch.full((1, 256), den.mask_id),
                    dict(mask_id=den.mask_id, num_steps=1024, grid=grid, vocab_size=den.vocab_size)))
    return out


class TimedDenoiser:
    """``denoiser`` (its attributes forwarded) with the wall time spent inside its calls added up in
    ``seconds``: a sampler's time outside the network is the run's wall time minus that (exact on
    the CPU, where calls are synchronous)."""

    def __init__(self, denoiser):
        self.denoiser, self.seconds = denoiser, 0.0

    def __getattr__(self, name):
        return getattr(self.denoiser, name)

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self.denoiser(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def timed_runs(makers: dict, x, reps: int, timed: TimedDenoiser) -> dict:
    """``{label: (wall times of the reps, seconds per round outside the denoiser ``timed`` (which
    every sampler calls) in each rep, last result)}`` of ``makers[label]()`` (a sampler per run),
    the labels interleaved within each repetition, in the order of ``makers`` and reversed in every
    other one (so no label always runs first or right after another): on a machine whose speed
    drifts, every label's times are drawn from the same stretches of time, and repetition ``i`` of
    two labels adjacent in ``makers`` is a pair run back to back. ``makers["auto (warm)"]`` returns
    one sampler, used once before the timed runs."""
    times = {label: [] for label in makers}
    outside = {label: [] for label in makers}
    results = {}
    warm = makers["auto (warm)"]()
    warm.sample(x, seed=0)
    for rep in range(reps):
        order = list(makers.items())
        for label, make in order if rep % 2 == 0 else order[::-1]:
            sampler = warm if label == "auto (warm)" else make()
            timed.seconds = 0.0
            start = time.perf_counter()
            results[label] = r = sampler.sample(x, seed=0)
            times[label].append(time.perf_counter() - start)
            outside[label].append((times[label][-1] - timed.seconds) / r.rounds)
    return {label: (times[label], outside[label], results[label]) for label in makers}


def paired(seq_times: list[float], times: list[float]) -> dict:
    """Speed-up over sequential per repetition (``seq_i / t_i``, the two runs close in time):
    median, min and max. Drift of the machine's speed largely cancels in each pair."""
    ratios = sorted(s / t for s, t in zip(seq_times, times))
    return {"median": statistics.median(ratios), "min": ratios[0], "max": ratios[-1]}


def best_fixed(fixed: dict) -> dict:
    """The fixed window with the highest median paired speed-up, and that speed-up."""
    w = max(fixed, key=lambda w: fixed[w]["paired"]["median"])
    return {"window": w, "speedup": fixed[w]["paired"]["median"]}


def run(reps: int = 3) -> dict:
    rows = []
    for name, kind, den, x, kw in settings():
        den = TimedDenoiser(den)
        makers = {"auto (warm)": lambda: PITSampler(den, window="auto", **kw),
                  "sequential": lambda: TauLeapingSampler(den, **kw),
                  "auto": lambda: PITSampler(den, window="auto", **kw)}  # each auto run next to a sequential one
        makers.update({w: (lambda w=w: PITSampler(den, window=w, **kw)) for w in FIXED[kind]})
        runs = timed_runs(makers, x, reps, den)
        seq_times, seq_outside, seq = runs.pop("sequential")
        seq_time = min(seq_times)
        entry = {"setting": name, "sequential": {"seconds": seq_time, "rounds": seq.rounds, "times": seq_times,
                                                 "outside_per_round": statistics.median(seq_outside)}, "fixed": {}}
        for label, (times, outside, r) in runs.items():
            assert torch.equal(r.tokens, seq.tokens), (name, label)
            t = min(times)
            row = {"seconds": t, "rounds": r.rounds, "speedup": seq_time / t, "times": times,
                   "paired": paired(seq_times, times), "outside_per_round": statistics.median(outside)}
            if label in ("auto", "auto (warm)"):
                entry[label] = {**row, "windows": r.windows, "chosen": r.policy["chosen"]}
            else:
                entry["fixed"][label] = row
        entry["best_fixed"] = best_fixed(entry["fixed"])
        rows.append(entry)
        print(row_text(entry), flush=True)
    return {"date": datetime.date.today().isoformat(), "environment": environment(torch.device("cpu")),
            "reps": reps, "rows": rows}


def _paired_text(p: dict) -> str:
    return f"{p['median']:.2f}x [{p['min']:.2f}, {p['max']:.2f}]"


def row_text(e: dict) -> str:
    best = e["best_fixed"]
    fresh, warm = e["auto"], e["auto (warm)"]
    bar = max(best["speedup"], 1.0)
    return (f"| {e['setting']} | {e['sequential']['rounds']} | {best['speedup']:.2f}x (W={best['window']}) | "
            f"{_paired_text(fresh['paired'])} | {fresh['rounds']}, W={fresh['chosen']} | {_paired_text(warm['paired'])} | "
            f"{fresh['paired']['median'] / bar:.2f} / {warm['paired']['median'] / bar:.2f} | "
            f"{fresh['speedup']:.2f}x / {warm['speedup']:.2f}x | {1e3 * e['sequential']['outside_per_round']:.1f} / "
            f"{1e3 * fresh['outside_per_round']:.1f} / {1e3 * warm['outside_per_round']:.1f} |")


def markdown(result: dict) -> str:
    env = result["environment"]
    head = (f"# window=\"auto\" on {env.get('device_name', 'CPU')}, {result['date']}\n\n"
            f"Wall-time speed-up over sequential tau-leaping, {result['reps']} repetitions, every configuration "
            "once per repetition (tokens identical in every run). Paired: the speed-up of each repetition "
            "(each auto run next to a sequential one), median [min, max]; a range that holds 1.00x means this "
            "machine cannot tell the two apart. Best fixed W: the highest paired median. Of best: auto's "
            "paired median over max(1, best fixed), fresh / warm. Best of: best auto time over best "
            "sequential time. Outside: milliseconds per round spent outside the network (sampling, "
            "bookkeeping, the window policy), median over the runs, sequential / auto fresh / auto warm.\n\n"
            "| setting | seq rounds | best fixed W | auto fresh, paired | fresh: rounds, final W | "
            "auto warm, paired | of best | best of, fresh / warm | outside, ms/round |\n"
            "|---|---|---|---|---|---|---|---|---|\n")
    return head + "\n".join(row_text(e) for e in result["rows"]) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="path prefix: writes <out>.json and <out>.md")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(args.reps)
    Path(f"{args.out}.json").write_text(json.dumps(result, indent=1, default=str))
    Path(f"{args.out}.md").write_text(markdown(result))


if __name__ == "__main__":
    main()
