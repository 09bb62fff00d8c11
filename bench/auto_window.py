"""``window="auto"`` against sequential tau-leaping and every fixed window, on this machine.

For each setting it times, best of ``--reps`` runs, the sequential baseline, ``PITSampler`` at fixed
windows and ``window="auto"`` (a fresh sampler per run, so nothing is learned from an earlier run; a
second "auto (warm)" row reuses one sampler after one untimed run, as a user calling ``sample()``
repeatedly would), all from the same seed, and checks that every run's tokens equal the baseline's.
The runs are interleaved (each repetition runs every configuration once), so a machine whose speed
drifts affects all of them alike. Wall-time ratios within one run are the result (absolute times
are not comparable across machines).

Settings: the demo's digits model (64 samples, N = 256); the small random transformer of
:mod:`bench.models` at L = 256, B = 1 and 4 (N = 128, geometric); the mixture and HMM oracles at
L = 256 with a transformer's forward pass as each call's cost (N = 1024), as in :mod:`bench.e2e`.

    python -m bench.auto_window --threads 2 --reps 5 --out bench/results/auto-window-cpu-2026-12-02
"""

from __future__ import annotations

import argparse
import datetime
import json
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
                                                                    vocab_size=digits.VOCAB_SIZE))]
    for b in (1, 4):
        out.append((f"small transformer L=256 B={b} (N=128)", "transformer", small, torch.full((b, 256), small.mask_id),
                    dict(mask_id=small.mask_id, num_steps=128, vocab_size=small.vocab_size)))
    for name, grid in (("mixture", "uniform"), ("hmm", "geometric")):
        den = OracleDenoiser(make_oracle(name, 0, num_tokens=16, length=256), cost)
        out.append((f"{name} oracle + cost net L=256 (N=1024, {grid})", "oracle", den, torch.full((1, 256), den.mask_id),
                    dict(mask_id=den.mask_id, num_steps=1024, grid=grid, vocab_size=den.vocab_size)))
    return out


def best_times(makers: dict, x, reps: int) -> dict:
    """``{label: (best wall time, last result)}`` of ``makers[label]()`` (a sampler per run), the labels
    interleaved within each repetition: on a machine whose speed drifts, every label's best is drawn
    from the same stretch of time. ``makers["auto (warm)"]`` returns one sampler, used once before
    the timed runs."""
    best = {label: (float("inf"), None) for label in makers}
    warm = makers["auto (warm)"]()
    warm.sample(x, seed=0)
    for _ in range(reps):
        for label, make in makers.items():
            sampler = warm if label == "auto (warm)" else make()
            start = time.perf_counter()
            result = sampler.sample(x, seed=0)
            best[label] = (min(best[label][0], time.perf_counter() - start), result)
    return best


def run(reps: int = 3) -> dict:
    rows = []
    for name, kind, den, x, kw in settings():
        makers = {"sequential": lambda: TauLeapingSampler(den, **kw)}
        makers.update({w: (lambda w=w: PITSampler(den, window=w, **kw)) for w in FIXED[kind]})
        makers.update({label: (lambda: PITSampler(den, window="auto", **kw)) for label in ("auto", "auto (warm)")})
        best = best_times(makers, x, reps)
        seq_time, seq = best.pop("sequential")
        entry = {"setting": name, "sequential": {"seconds": seq_time, "rounds": seq.rounds}, "fixed": {}}
        for label, (t, r) in best.items():
            assert torch.equal(r.tokens, seq.tokens), (name, label)
            if label in ("auto", "auto (warm)"):
                entry[label] = {"seconds": t, "rounds": r.rounds, "speedup": seq_time / t, "windows": r.windows,
                                "chosen": r.policy["chosen"]}
            else:
                entry["fixed"][label] = {"seconds": t, "rounds": r.rounds, "speedup": seq_time / t}
        best_w = max(entry["fixed"], key=lambda w: entry["fixed"][w]["speedup"])
        entry["best_fixed"] = {"window": best_w, "speedup": entry["fixed"][best_w]["speedup"]}
        rows.append(entry)
        print(row_text(entry), flush=True)
    return {"date": datetime.date.today().isoformat(), "environment": environment(torch.device("cpu")),
            "reps": reps, "rows": rows}


def row_text(e: dict) -> str:
    best = e["best_fixed"]
    return (f"| {e['setting']} | {e['sequential']['rounds']} | {best['speedup']:.2f}x (W={best['window']}) | "
            f"{e['auto']['speedup']:.2f}x (rounds {e['auto']['rounds']}, chose W={e['auto']['chosen']}) | "
            f"{e['auto (warm)']['speedup']:.2f}x | {e['auto']['speedup'] / max(best['speedup'], 1.0):.2f} |")


def markdown(result: dict) -> str:
    env = result["environment"]
    head = (f"# window=\"auto\" on {env.get('device_name', 'CPU')}, {result['date']}\n\n"
            f"Wall-time speed-up over sequential tau-leaping (best of {result['reps']}; tokens identical in "
            "every run). Last column: auto's speed-up over max(1, best fixed-W speed-up).\n\n"
            "| setting | seq rounds | best fixed W | auto (fresh) | auto (warm) | auto / max(1, best) |\n"
            "|---|---|---|---|---|---|\n")
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
