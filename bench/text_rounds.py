"""Rounds and nfe of exact PIT against the window W and the number of steps on the shipped text model.

The model is :func:`pit_sampler.models.text.load_text_model` (``ModernBertForMaskedLM``, float64,
batch-invariant) through ``HFMaskedLM``, at ``L = 128`` and ``L = 256``. For each length and step
count ``N`` (multiples of ``L``) the script runs sequential tau-leaping once and ``PITSampler(window=W,
tol=0)`` for every ``W``, all from the same seed (all-masked input, log-linear schedule, geometric
grid, the ``reject`` rule), checks that every PIT run's tokens equal the sequential tokens, and
records sequential rounds (network calls), PIT rounds, rows per sample (nfe) and wall times. The
round counts do not depend on the machine; the seconds do (and the machine may be shared).

    python -m bench.text_rounds --out bench/results/text-rounds-cpu-2026-12-01

writes ``<out>.json``, ``<out>.md`` (tables) and ``<out>.png`` (rounds ratio and nfe ratio against W,
one line per step count, one column per length).
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch

from pit_sampler import PITSampler, TauLeapingSampler
from pit_sampler.models import text

from .e2e import cpu_name

GRID = {  # length -> (step multiples of L, windows)
    128: ((1, 2, 4, 8, 16), (4, 8, 16, 32, 64, 128)),
    256: ((1, 4, 16), (4, 16, 64, 128)),
}


def run(grid: dict, batch: int, seed: int) -> list[dict]:
    tok = text.load_tokenizer()
    den = text.text_denoiser(text.load_text_model(), tok)
    rows = []
    for length, (multiples, windows) in grid.items():
        x = torch.full((batch, length), tok.mask_token_id, dtype=torch.int64)
        den(x[:1], torch.ones(1))  # warm-up call
        for m in multiples:
            kw = dict(num_steps=m * length, grid="geometric", rule="reject", **den.sampler_kwargs())
            start = time.perf_counter()
            seq = TauLeapingSampler(den, **kw).sample(x, seed=seed)
            seq_s = time.perf_counter() - start
            for w in windows:
                start = time.perf_counter()
                pit = PITSampler(den, window=w, **kw).sample(x, seed=seed)
                pit_s = time.perf_counter() - start
                row = dict(L=length, steps=m * length, W=w, B=batch, seq_rounds=seq.rounds, seq_nfe=seq.nfe,
                           pit_rounds=pit.rounds, pit_nfe=pit.nfe, rounds_ratio=seq.rounds / pit.rounds,
                           nfe_ratio=pit.nfe / seq.nfe, identical=bool(torch.equal(seq.tokens, pit.tokens)),
                           exact=pit.exact, seq_s=round(seq_s, 2), pit_s=round(pit_s, 2))
                rows.append(row)
                print(json.dumps(row), flush=True)
                if not row["identical"]:
                    raise AssertionError(f"PIT tokens differ from the sequential tokens: {row}")
    return rows


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [f"# Exact PIT on the text model: rounds and nfe against W ({env['cpu']}, {env['date']})", "",
             f"Shipped text model (ModernBertForMaskedLM, float64) through HFMaskedLM, B = {result['batch']}, seed "
             f"{result['seed']}, all-masked input, log-linear schedule, geometric grid, rule `reject`; "
             f"tokens identical to sequential tau-leaping in every run: {all(r['identical'] for r in result['rows'])}. "
             f"torch {env['torch']}, {env['threads']} thread(s); total {result['seconds']:.0f} s. "
             "Cells: sequential rounds / PIT rounds (PIT nfe / sequential nfe).", ""]
    for length in sorted({r["L"] for r in result["rows"]}):
        rows = [r for r in result["rows"] if r["L"] == length]
        windows = sorted({r["W"] for r in rows})
        lines += [f"## L = {length}", "", "| steps | seq rounds | seq nfe | " + " | ".join(f"W={w}" for w in windows) + " |",
                  "|---" * (3 + len(windows)) + "|"]
        for steps in sorted({r["steps"] for r in rows}):
            cells = {r["W"]: r for r in rows if r["steps"] == steps}
            first = next(iter(cells.values()))
            lines.append(f"| {steps} ({steps // length}L) | {first['seq_rounds']} | {first['seq_nfe']:.0f} | " + " | ".join(
                f"{cells[w]['rounds_ratio']:.1f}x ({cells[w]['nfe_ratio']:.2f})" if w in cells else "-" for w in windows) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted({r["L"] for r in result["rows"]})
    fig, axes = plt.subplots(2, len(lengths), figsize=(5.2 * len(lengths), 7.5), squeeze=False)
    for col, length in enumerate(lengths):
        rows = [r for r in result["rows"] if r["L"] == length]
        for steps in sorted({r["steps"] for r in rows}):
            sel = sorted((r for r in rows if r["steps"] == steps), key=lambda r: r["W"])
            w = [r["W"] for r in sel]
            label = f"N={steps} ({steps // length}L), seq {sel[0]['seq_rounds']} rounds"
            axes[0, col].plot(w, [r["rounds_ratio"] for r in sel], "o-", label=label)
            axes[1, col].plot(w, [r["nfe_ratio"] for r in sel], "o-", label=label)
        axes[0, col].plot(w, w, "k:", lw=0.8, label="W (ideal)")
        for row, ylabel in ((0, "rounds ratio (sequential / PIT)"), (1, "nfe ratio (PIT / sequential)")):
            ax = axes[row, col]
            ax.set_xscale("log", base=2)
            ax.set_xlabel("window W")
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        axes[0, col].set_yscale("log", base=2)
        axes[0, col].set_ylim(1, max(r["rounds_ratio"] for r in rows) * 2)
        axes[0, col].set_title(f"text model, L = {length}, exact PIT (tokens identical)")
        axes[0, col].legend(fontsize=7)
    env = result["environment"]
    fig.suptitle(f"{env['cpu']}, {env['date']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.text_rounds", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output prefix (writes .json, .md, .png)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="L = 128 only, steps L and 4L, W in 4, 16")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    grid = {128: ((1, 4), (4, 16))} if args.quick else GRID
    start = time.time()
    rows = run(grid, args.batch, args.seed)
    result = {
        "environment": {"cpu": cpu_name(), "date": datetime.date.today().isoformat(), "torch": torch.__version__,
                        "threads": torch.get_num_threads()},
        "batch": args.batch, "seed": args.seed, "seconds": round(time.time() - start, 1), "rows": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result) + "\n")
    plot(result, out.with_suffix(".png"))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
