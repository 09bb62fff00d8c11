"""Accuracy of the second-order (theta-trapezoidal) solver against first-order tau-leaping.

On exact oracles (``pit_sampler.testing``: mixture and HMM, L = 16, 8 tokens) the error of a sampler
is the gap between the mean exact log-likelihood of exact samples and of its samples (nats; its
standard error from the per-sample spread). For N steps the first-order sampler makes N model
evaluations (the skip-inactive sequential sampler fewer: at most L + 1), the trapezoidal one 2 N + 1.
Reported per step (same N) and per evaluation (first order at 2 N), with the least-squares slope of
log(error) against log(N) (the empirical order; 1 for a first-order method, 2 for second order).

    python -m bench.trapezoidal --out bench/results/trapezoidal-quality-cpu-2026-12-06
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
from pathlib import Path

import torch

from pit_sampler import TauLeapingSampler
from pit_sampler.testing import make_oracle

from .e2e import cpu_name


def gap(oracle, exact_mean: float, solver: str, N: int, n: int, grid: str, seed: int) -> dict:
    """Error and standard error of ``n`` samples of ``solver`` at ``N`` steps."""
    x = torch.full((n, oracle.length), oracle.mask_id)
    out = TauLeapingSampler(oracle, mask_id=oracle.mask_id, vocab_size=oracle.vocab_size, num_steps=N, grid=grid,
                            rule="reject", solver=solver).sample(x, seed=seed)
    ll = oracle.log_prob(out.tokens)
    return {"error": exact_mean - float(ll.mean()), "se": float((ll.var() / n).sqrt()), "rounds": out.rounds}


def slope(points: dict[int, dict]) -> float:
    """``-d log(error) / d log(N)`` by least squares over the errors above 4 standard errors (below
    that the sampling noise, not the solver, sets them); ``nan`` with fewer than two such points."""
    xy = [(math.log(N), math.log(p["error"])) for N, p in points.items() if p["error"] > 4 * p["se"]]
    if len(xy) < 2:
        return math.nan
    mx, my = sum(x for x, _ in xy) / len(xy), sum(y for _, y in xy) / len(xy)
    return -sum((x - mx) * (y - my) for x, y in xy) / sum((x - mx) ** 2 for x, _ in xy)


def run(steps: list[int], n: int, grids: list[str]) -> dict:
    rows = []
    for name in ("mixture", "hmm"):
        oracle = make_oracle(name, seed=0, num_tokens=8, length=16)
        exact = oracle.log_prob(oracle.sample(n, torch.Generator().manual_seed(0)))
        exact_mean = float(exact.mean())
        for grid in grids:
            for N in steps:
                first = gap(oracle, exact_mean, "euler", N, n, grid, seed=N)
                double = gap(oracle, exact_mean, "euler", 2 * N, n, grid, seed=2 * N + 1)
                trap = gap(oracle, exact_mean, "trapezoidal", N, n, grid, seed=N + 7)
                rows.append({"oracle": name, "grid": grid, "N": N, "exact_mean": exact_mean, "first_order": first,
                             "first_order_2N": double, "trapezoidal": trap})
                print(name, grid, N, f"first {first['error']:.3f} | first@2N {double['error']:.3f} | "
                      f"trap {trap['error']:.3f} (se {trap['se']:.3f})", flush=True)
    slopes = {}
    for name in ("mixture", "hmm"):
        for grid in grids:
            sel = [r for r in rows if r["oracle"] == name and r["grid"] == grid]
            slopes[f"{name} {grid}"] = {k: slope({r["N"]: r[k] for r in sel})
                                        for k in ("first_order", "trapezoidal")}
    return {"date": datetime.date.today().isoformat(), "device": cpu_name(), "samples": n, "rows": rows,
            "slopes": slopes}


def markdown(result: dict) -> str:
    out = [f"# Second-order (theta-trapezoidal, theta = 0.5) against first-order tau-leaping, {result['date']}\n",
           f"{result['device']}; `python -m bench.trapezoidal`; error = exact samples' mean exact log-likelihood "
           f"minus the sampler's (nats), {result['samples']} samples each (standard error in brackets); rule "
           "`reject`. Model evaluations: first order at most N + 1 (skip-inactive: at most L + 1 = 17), "
           "trapezoidal 2N + 1.\n",
           "| oracle | grid | N | first order, N steps | first order, 2N steps | trapezoidal, N steps |",
           "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        cell = lambda d: f"{d['error']:.3f} ({d['se']:.3f})"  # noqa: E731
        out.append(f"| {r['oracle']} | {r['grid']} | {r['N']} | {cell(r['first_order'])} | {cell(r['first_order_2N'])} "
                   f"| {cell(r['trapezoidal'])} |")
    out += ["", "Empirical order (least-squares slope of log error against log N, over the errors above 4 "
            "standard errors):", "",
            "| oracle, grid | first order | trapezoidal |", "|---|---|---|"]
    out += [f"| {k} | {v['first_order']:.2f} | {v['trapezoidal']:.2f} |" for k, v in result["slopes"].items()]
    return "\n".join(out) + "\n"


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r["oracle"], r["grid"]) for r in result["rows"]})
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.6), squeeze=False)
    for ax, (name, grid) in zip(axes[0], keys):
        sel = [r for r in result["rows"] if r["oracle"] == name and r["grid"] == grid]
        for key, label in (("first_order", "first order"), ("trapezoidal", "trapezoidal")):
            ax.loglog([r["N"] for r in sel], [max(r[key]["error"], 1e-3) for r in sel], "o-", label=label)
        ax.set_title(f"{name}, {grid} grid")
        ax.set_xlabel("steps N")
        ax.set_ylabel("log-likelihood gap (nats)")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="path prefix: writes <out>.json, <out>.md and <out>.png")
    parser.add_argument("--steps", type=int, nargs="+", default=[4, 8, 16, 32, 64])
    parser.add_argument("--samples", type=int, default=16000)
    parser.add_argument("--grids", nargs="+", default=["uniform"])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    result = run(args.steps, args.samples, args.grids)
    text = markdown(result)
    print(text)
    if args.out:
        Path(f"{args.out}.json").write_text(json.dumps(result, indent=1))
        Path(f"{args.out}.md").write_text(text)
        plot(result, f"{args.out}.png")


if __name__ == "__main__":
    main()
