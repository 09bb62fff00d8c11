"""Plots of an end-to-end result (:mod:`bench.e2e`): PNG files next to its JSON.

* ``<out>-speedup_window.png``: wall-time speedup of PIT over the sequential baseline against the window
  (solid), with the reduction in sequential rounds (dotted, what the speedup tends to when a call of
  ``W x B`` rows costs as much as one of ``B``); an ``x`` marks runs whose tokens were not identical.
* ``<out>-speedup_batch.png``: speedup against the batch size, one line per window.
* ``<out>-residuals.png``: the Picard residual per iteration (positions changed from the previous
  iterate, summed over the window) for batch-1 configurations.

    python -m bench.plot bench/results/cpu-2026-11-22.json
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

_PANEL = ("setting", "model", "dtype")


def _runs(result: dict) -> list[dict]:
    return [r for r in result["rows"] if "time_s" in r]


def _panels(rows: list[dict]) -> dict[tuple, list[dict]]:
    panels = defaultdict(list)
    for r in rows:
        panels[tuple(r[k] for k in _PANEL)].append(r)
    return dict(panels)


def _figure(n: int, title: str):
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(5.5 * cols, 4 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig, list(axes.flat)


def _finish(fig, ax_list, path: Path, parity: bool = True) -> Path:
    """Grid, legends, a dashed line at speedup 1 (``parity``), save and close."""
    for ax in ax_list:
        if ax.get_visible():
            if parity:
                ax.axhline(1.0, color="grey", lw=0.8, ls="--")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, "nothing measured at several values", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _label(env: dict) -> str:
    return f"{env['device_name']} ({env['device']})"


_SHORT = {"length": "L", "batch": "B", "steps": "N", "window": "W"}


def _speedup_lines(result: dict, path: Path, what: str, x: str, line_key: tuple, dotted: bool,
                   min_points: int = 1) -> Path:
    """PIT's speedup against ``x`` (``window`` or ``batch``), one line per value of ``line_key``
    measured at ``min_points`` points or more, a panel per device setting; ``dotted``: the rounds
    reduction too, and red crosses where the tokens differed."""
    panels = _panels([r for r in _runs(result) if r["sampler"] == "pit"])
    fig, axes = _figure(max(1, len(panels)), f"PIT vs sequential: speedup vs {what}, {_label(result['env'])}")
    for ax, (key, rows) in zip(axes, sorted(panels.items())):
        lines = defaultdict(list)
        for r in rows:
            lines[tuple(r[k] for k in line_key)].append(r)
        for values, pts in sorted(lines.items()):
            if len(pts) < min_points:
                continue
            pts.sort(key=lambda r: r[x])
            label = " ".join(f"{_SHORT.get(k, '')}{v}" for k, v in zip(line_key, values))
            (line,) = ax.plot([r[x] for r in pts], [r["speedup"] for r in pts], "o-", label=label)
            if dotted:
                ax.plot([r[x] for r in pts], [r["rounds_ratio"] for r in pts], ":", color=line.get_color())
                bad = [r for r in pts if not r["identical"]]
                ax.plot([r[x] for r in bad], [r["speedup"] for r in bad], "x", color="red", ms=9)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"{what} {'W' if x == 'window' else 'B'}")
        ax.set_ylabel("speedup (solid), rounds seq/PIT (dotted)" if dotted else "speedup")
        ax.set_title("/".join(map(str, key)), fontsize=9)
    return _finish(fig, axes, path)


def speedup_vs_window(result: dict, path: Path) -> Path:
    """Speedup (solid) and rounds reduction (dotted) against the window, one line per (L, B, N, grid)."""
    return _speedup_lines(result, path, "window", "window", ("length", "batch", "steps", "grid"), dotted=True)


def speedup_vs_batch(result: dict, path: Path) -> Path:
    """Speedup against the batch size, one line per (L, N, grid, W) measured at two or more batch sizes."""
    return _speedup_lines(result, path, "batch", "batch", ("window", "length", "steps", "grid"), dotted=False,
                          min_points=2)


def residuals(result: dict, path: Path) -> Path:
    """Residual per iteration for every batch-1 configuration, one line per window."""
    rows = [r for r in _runs(result) if r["sampler"] == "pit" and r["batch"] == 1 and r.get("residual_total")]
    configs = defaultdict(list)
    for r in rows:
        configs[tuple(r[k] for k in (*_PANEL, "length", "steps", "grid"))].append(r)
    fig, axes = _figure(max(1, len(configs)), f"Picard residual per iteration (batch 1), {_label(result['env'])}")
    for ax, (key, runs) in zip(axes, sorted(configs.items())):
        for r in sorted(runs, key=lambda r: r["window"]):
            ax.plot(range(1, len(r["residual_total"]) + 1), r["residual_total"], lw=1, label=f"W{r['window']}")
        ax.set_yscale("symlog", linthresh=1)
        ax.set_xlabel("iteration (= sequential round)")
        ax.set_ylabel("positions changed vs previous iterate")
        ax.set_title("/".join(map(str, key)), fontsize=9)
    return _finish(fig, axes, path, parity=False)


def plot_all(result: dict, out: str | Path) -> list[Path]:
    """Write the three plots as ``<out>-<name>.png``; returns their paths."""
    return [
        speedup_vs_window(result, Path(f"{out}-speedup_window.png")),
        speedup_vs_batch(result, Path(f"{out}-speedup_batch.png")),
        residuals(result, Path(f"{out}-residuals.png")),
    ]


if __name__ == "__main__":
    src = Path(sys.argv[1])
    for p in plot_all(json.loads(src.read_text()), src.with_suffix("")):
        print(p)
