"""Quality against sequential network calls: sequential tau-leaping and PIT (exact and approximate)
on the exact oracles.

x: **sequential network calls** (rounds) of one sample, the latency PIT cuts; y: **mean exact
log-likelihood** ``E_q[log p(x)]`` of the samples under the oracle ``p`` (exact samples score ``-H(p)``;
docs/quality.md says why the metric is read with care: a sampler can score above exact samples by
concentrating on likely sequences). Every sampler runs at the package defaults (grid, rule, final,
``t_min``: :class:`pit_sampler.TauLeapingConfig`) with the oracle as a perfect, batch-invariant
denoiser, so all differences come from the sampler. Curves, per oracle (mixture and HMM, 8 tokens)
and length (``L = 16`` and ``L = 256``), at ``N = L/4, L/2, ..., 16 L`` steps:

* ``sequential``: :class:`~pit_sampler.TauLeapingSampler` (skip-inactive: a step at which no position
  unmasks costs no call). Its rounds per sample are the distinct steps of the sample's unmask table
  (:func:`pit_sampler.ops.unmask_table`: when each position unmasks depends on the noise alone), for
  every sample; the smoke test checks them against single-sample runs.
* ``sequential, old default grid (geometric)``: the same with ``grid="geometric"``, the default before
  issue 25, whose large first steps need fewer calls at equal ``N`` but lose quality.
* ``exact W=16``, ``exact W=64``: :class:`~pit_sampler.PITSampler` with ``tol=0``. Its tokens *are* the
  sequential tokens (checked on every sample whose rounds are measured), so its quality is the
  sequential quality at the same ``N`` and only its rounds move. ``exact W=16, old default grid
  (geometric)``: the same on the geometric grid (the old default's PIT curve).
* approximate: ``tol=0.05`` at ``W = 16`` (accept slices with at most 5% of positions changed; below
  ``1 / L`` at ``L = 16``, where it is exact) and ``mode="fixed"`` with 1 and 2 Picard iterations per
  16-step block.

Quality comes from one batch of ``n`` samples with per-sample seeds (``sample_seeds``: a sample's
tokens do not depend on its batch slot, for every mode; the approximate modes use the first
``n_approx``); PIT's rounds per sample are the mean of single-sample runs (``B = 1``) on the first
``m`` of those seeds (a batch's rounds are the maximum over its samples).

**The headline** (per oracle and length): ``R`` = the sequential sampler's rounds at ``N = L``; among
the exact-PIT points (both windows, every ``N``) whose rounds are at most ``R``, the best
log-likelihood; how much closer to exact it is than sequential at ``N = L`` (nats, and as a fraction
of sequential's gap to exact samples).

    python -m bench.quality --out bench/results/quality-cpu-2026-12-06     # 22 min on 2 shared cores, 1 thread
    python -m bench.quality --preset tiny --out /tmp/quality               # seconds (the smoke test)

writes ``<out>.json`` (every row), ``<out>.md`` (tables, headline) and ``<out>.png`` (the curves);
``--tables-only`` rebuilds the last two from the first.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import time
from pathlib import Path

import torch

from pit_sampler import PITSampler, TauLeapingConfig, TauLeapingSampler, ops
from pit_sampler.noise import sample_seeds
from pit_sampler.rules import step_tables
from pit_sampler.schedules import get_schedule, time_grid
from pit_sampler.testing import make_oracle

from .e2e import cpu_name

#: name -> (sampler, keywords): "seq" is TauLeapingSampler, "pit" PITSampler; the rest at the defaults
MODES = {
    "sequential": ("seq", {}),
    "sequential, old default grid (geometric)": ("seq", dict(grid="geometric")),
    "exact W=16": ("pit", dict(window=16)),
    "exact W=64": ("pit", dict(window=64)),
    "exact W=16, old default grid (geometric)": ("pit", dict(window=16, grid="geometric")),
    "tol=0.05 W=16": ("pit", dict(window=16, tol=0.05)),
    "fixed 1 iter W=16": ("pit", dict(window=16, mode="fixed", max_iters=1)),
    "fixed 2 iters W=16": ("pit", dict(window=16, mode="fixed", max_iters=2)),
}
EXACT = ("exact W=16", "exact W=64")  # exact PIT at the default grid: the headline's candidates

#: preset -> settings (oracle, L, steps, n samples for the exact modes' quality, n_approx samples for the
#: approximate modes' (their losses are large), m single-sample runs for PIT's rounds)
PRESETS = {
    "full": [(name, 16, (4, 8, 16, 32, 64, 128, 256), 4000, 4000, 64) for name in ("mixture", "hmm")]
    + [(name, 256, (64, 128, 256, 512, 1024, 2048, 4096), 1024, 256, 16) for name in ("mixture", "hmm")],
    "tiny": [("mixture", 16, (4, 16), 64, 32, 4)],
}


@functools.cache
def oracle(name: str, length: int):
    """``make_oracle(name, num_tokens=8, length=length)`` (seed 0): at ``L = 16`` issue 25's oracles."""
    return make_oracle(name, num_tokens=8, length=length)


def sequential_rounds(x: torch.Tensor, seeds: torch.Tensor, config: TauLeapingConfig) -> torch.Tensor:
    """int64 ``[B]``: the rounds of a single-sample sequential run of each row of ``x``: the number of
    distinct steps at which one of its masked positions unmasks (skip-inactive runs exactly those),
    from the unmask table of the config's grid and rule (mean parametrization)."""
    c = config
    tables = step_tables(get_schedule(c.schedule), time_grid(c.num_steps, c.grid, c.t_max, c.t_min), c.rule)
    table = ops.unmask_table(x, seeds, tables.cdf, c.mask_id, tables.rule)  # [B, L], -1 where not masked
    ordered = table.sort(1).values
    new = torch.ones_like(ordered, dtype=torch.bool)
    new[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    return (new & (ordered >= 0)).sum(1)


def measure(name: str, length: int, num_steps: int, n: int, n_approx: int, m: int, seed: int = 0) -> list[dict]:
    """One row per mode at ``num_steps``: mean log-likelihood (and s.e.) of ``n`` samples (the first
    ``n_approx`` of them for the approximate modes), mean rounds and nfe per sample, whether PIT's tokens
    equal the sequential tokens on the ``m`` checked seeds."""
    orc = oracle(name, length)
    kw = dict(mask_id=orc.mask_id, vocab_size=orc.vocab_size, num_steps=num_steps)
    x = torch.full((n, length), orc.mask_id, dtype=torch.int64)
    seeds = sample_seeds(seed, n)
    rows, seq_tokens = [], {}  # grid -> the sequential tokens
    for mode, (kind, mode_kw) in MODES.items():
        start = time.perf_counter()
        sampler = (TauLeapingSampler if kind == "seq" else PITSampler)(orc, **kw, **mode_kw)
        grid, exact = sampler.config.grid, kind == "pit" and sampler.exact
        if kind == "seq":
            tokens = seq_tokens[grid] = sampler.sample(x, seed=seeds).tokens
            rounds = nfe = sequential_rounds(x, seeds, sampler.config).to(torch.float64)
            identical = None
        else:
            tokens = seq_tokens[grid] if exact else sampler.sample(x[:n_approx], seed=seeds[:n_approx]).tokens
            singles = [PITSampler(orc, **kw, **mode_kw).sample(x[i:i + 1], seed=seeds[i:i + 1]) for i in range(m)]
            rounds = torch.tensor([float(r.rounds) for r in singles], dtype=torch.float64)
            nfe = torch.tensor([r.nfe for r in singles], dtype=torch.float64)
            singles_tokens = torch.cat([r.tokens for r in singles])
            identical = bool(torch.equal(singles_tokens, seq_tokens[grid][:m]))
            if exact and not identical:
                raise AssertionError(f"exact PIT ({mode}) tokens differ from sequential: {name} L={length} N={num_steps}")
            if not torch.equal(singles_tokens, tokens[:m]):
                raise AssertionError(f"{mode}: single-sample tokens differ from the batch's (slot dependence)")
        lp = orc.log_prob(tokens)
        rows.append(dict(oracle=name, L=length, N=num_steps, mode=mode, grid=grid, exact=kind == "seq" or exact,
                         loglik=float(lp.mean()),
                         se=float(lp.std() / math.sqrt(len(lp))), n=len(lp), rounds=float(rounds.mean()), rounds_n=len(rounds),
                         rounds_max=float(rounds.max()), nfe=float(nfe.mean()), identical_to_sequential=identical,
                         seconds=round(time.perf_counter() - start, 2)))
    return rows


def exact_reference(name: str, length: int, n: int, seed: int = 0) -> dict:
    """Mean log-likelihood of ``n`` exact samples (``oracle.sample``): ``-H(p)`` up to its s.e."""
    orc = oracle(name, length)
    lp = orc.log_prob(orc.sample(n, generator=torch.Generator().manual_seed(seed)))
    return dict(loglik=float(lp.mean()), se=float(lp.std() / math.sqrt(n)), n=n)


def headline(rows: list[dict], exact: dict) -> dict:
    """At the rounds ``R`` of sequential ``N = L``: the best exact-PIT point within ``R`` rounds, its gain
    over sequential ``N = L`` in nats and as a fraction of sequential's gap to exact samples (``nan``
    unless the gap is at least twice its standard error); and the rounds exact PIT needs for
    sequential ``N = L``'s own tokens (the same quality)."""
    L = rows[0]["L"]
    (base,) = [r for r in rows if r["mode"] == "sequential" and r["N"] == L]
    within = [r for r in rows if r["mode"] in EXACT and r["rounds"] <= base["rounds"]]
    best = max(within, key=lambda r: r["loglik"])
    gap, gap_se = exact["loglik"] - base["loglik"], math.hypot(exact["se"], base["se"])
    gain = best["loglik"] - base["loglik"]
    approx = [r for r in rows if not r["exact"] and r["rounds"] <= base["rounds"]]
    best_approx = max(approx, key=lambda r: r["loglik"]) if approx else None
    same = {r["mode"]: r["rounds"] for r in rows if r["mode"] in EXACT and r["N"] == L}  # the same tokens as base
    return dict(rounds=base["rounds"], sequential=base["loglik"], sequential_se=base["se"], exact=exact["loglik"],
                pit_rounds_at_L=same,
                best_mode=best["mode"], best_N=best["N"], best_rounds=best["rounds"], best=best["loglik"],
                best_se=best["se"], gain=gain, gain_se=math.hypot(base["se"], best["se"]),
                gap=gap, gap_se=gap_se, fraction=gain / gap if gap > 2 * gap_se else float("nan"),
                approx=None if best_approx is None else {k: best_approx[k] for k in ("mode", "N", "rounds", "loglik", "se")})


def run(preset: str = "full", seed: int = 0, log=print) -> dict:
    settings = []
    for name, length, steps, n, n_approx, m in PRESETS[preset]:
        start = time.perf_counter()
        exact = exact_reference(name, length, max(n, 4000), seed)
        rows = [row for N in steps for row in measure(name, length, N, n, n_approx, m, seed)]
        settings.append(dict(oracle=name, L=length, exact=exact, rows=rows, headline=headline(rows, exact),
                             seconds=round(time.perf_counter() - start, 1)))
        log(f"{name} L={length}: {settings[-1]['seconds']:.0f} s; headline {settings[-1]['headline']}")
    config = TauLeapingConfig(mask_id=0, num_steps=1)
    defaults = {k: getattr(config, k) for k in ("schedule", "grid", "rule", "final", "t_min")}
    return dict(preset=preset, seed=seed, defaults=defaults, settings=settings)


def _share(h: dict) -> str:
    """The headline's share of the gap closed, or why there is none."""
    if not math.isfinite(h["fraction"]):
        return f"no measurable gap ({h['gap']:+.2f} ± {h['gap_se']:.2f})"
    return f"{100 * h['fraction']:.0f}% of {h['gap']:.2f} ± {h['gap_se']:.2f}"


def markdown(result: dict) -> str:
    env = result["environment"]
    d = result["defaults"]
    out = [f"# Quality against sequential network calls ({env['cpu']}, {env['date']})", "",
           f"`python -m bench.quality --preset {result['preset']}`: {result['seconds']:.0f} s, torch {env['torch']}, "
           f"{env['threads']} thread. Package defaults: schedule `{d['schedule']}`, grid `{d['grid']}`, rule "
           f"`{d['rule']}`, final `{d['final']}`, t_min {d['t_min']:g}. Oracles with 8 tokens (seed 0) as perfect "
           "denoisers. Rounds: sequential network calls per sample (sequential: every sample, from its unmask "
           "table; PIT: mean of single-sample runs). Log-lik: mean exact log-likelihood of the samples (± s.e.). "
           "Exact PIT's tokens equal the sequential tokens (checked), so its log-lik is sequential's at the same N "
           "on the same grid.", "", "## Headline", "",
           "At the rounds R that sequential N = L needs: the best exact-PIT point (W = 16 or 64, any N) within R "
           "rounds, its gain over sequential N = L and the share of sequential's gap to exact samples it closes; "
           "the rounds exact PIT needs for N = L itself (the same tokens); the best approximate point within R.", "",
           "| oracle | L | sequential N = L: rounds, log-lik | best exact PIT within those rounds | gain (nats) | "
           "share of the gap closed | exact samples | exact PIT at N = L: rounds (W=16 / W=64) | best approximate PIT "
           "within those rounds |", "|---|---|---|---|---|---|---|---|---|"]
    for s in result["settings"]:
        h, a = s["headline"], s["headline"]["approx"]
        approx = "-" if a is None else f"{a['mode']}, N = {a['N']}: {a['rounds']:.1f} rounds, {a['loglik']:.2f} ± {a['se']:.2f}"
        at_L = " / ".join(f"{h['pit_rounds_at_L'][m]:.1f}" for m in EXACT)
        out.append(f"| {s['oracle']} | {s['L']} | {h['rounds']:.1f}, {h['sequential']:.2f} ± {h['sequential_se']:.2f} | "
                   f"{h['best_mode']}, N = {h['best_N']}: {h['best_rounds']:.1f} rounds, {h['best']:.2f} ± {h['best_se']:.2f} | "
                   f"{h['gain']:+.2f} ± {h['gain_se']:.2f} | {_share(h)} | {h['exact']:.2f} | {at_L} | {approx} |")
    out.append("")
    for s in result["settings"]:
        rows = s["rows"]
        ex = s["exact"]
        n_exact = max(r["n"] for r in rows)
        n_approx = min(r["n"] for r in rows)
        approx = "" if n_approx == n_exact else f", {n_approx} for the approximate modes"
        out += [f"## {s['oracle']}, L = {s['L']} (exact samples {ex['loglik']:.2f} ± {ex['se']:.2f}; "
                f"{n_exact} samples per point{approx}; {s['seconds']:.0f} s)", "",
                "Cells: rounds per sample / mean log-lik (nfe per sample in brackets for PIT).", "",
                "| N | " + " | ".join(MODES) + " |", "|---" * (1 + len(MODES)) + "|"]
        for N in sorted({r["N"] for r in rows}):
            cells = []
            for mode in MODES:
                (r,) = [r for r in rows if r["N"] == N and r["mode"] == mode]
                nfe = "" if MODES[mode][0] == "seq" else f" ({r['nfe']:.0f})"
                cells.append(f"{r['rounds']:.1f} / {r['loglik']:.2f}{nfe}")
            out.append(f"| {N} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


STYLES = {"sequential": ("k", "o-"), "sequential, old default grid (geometric)": ("0.55", "o--"),
          "exact W=16": ("C0", "s-"), "exact W=64": ("C1", "^-"), "exact W=16, old default grid (geometric)": ("C9", "s--"),
          "tol=0.05 W=16": ("C2", "x--"), "fixed 1 iter W=16": ("C4", "v:"), "fixed 2 iters W=16": ("C3", "d:")}


def plot(result: dict, path: Path) -> None:
    """One row per setting: every curve (left; the one-iteration fixed mode may fall below the range,
    it is in the tables) and the default grid's exact curves up close (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = result["settings"]
    fig, axes = plt.subplots(len(settings), 2, figsize=(13, 4.4 * len(settings)), squeeze=False)
    for (wide, close), s in zip(axes, settings):
        h, ex = s["headline"], s["exact"]["loglik"]
        for ax, modes in ((wide, list(MODES)), (close, ["sequential", *EXACT])):
            for mode in modes:
                sel = sorted((r for r in s["rows"] if r["mode"] == mode), key=lambda r: r["N"])
                color, fmt = STYLES[mode]
                ax.plot([r["rounds"] for r in sel], [r["loglik"] for r in sel], fmt, color=color, label=mode, ms=4)
                if mode == "sequential":
                    for r in sel:
                        ax.annotate(f"N={r['N']}", (r["rounds"], r["loglik"]), fontsize=6, xytext=(3, -8),
                                    textcoords="offset points")
                if ax is close and mode == "sequential":
                    ax.fill_between([r["rounds"] for r in sel], [r["loglik"] - r["se"] for r in sel],
                                    [r["loglik"] + r["se"] for r in sel], color="k", alpha=0.1, label="± 1 s.e.")
            ax.axhline(ex, color="gray", ls="--", lw=1, label="exact samples")
            ax.axvline(h["rounds"], color="gray", ls=":", lw=1, label=f"sequential N=L: {h['rounds']:.1f} rounds")
            ax.set_xscale("log", base=2)
            ax.set_xlabel("sequential network calls per sample (rounds)")
            ax.set_ylabel("mean exact log-likelihood (nats)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6, loc="lower right")
        shown = [r["loglik"] for r in s["rows"] if r["mode"] != "fixed 1 iter W=16"] + [ex]
        wide.set_ylim(min(shown) - 0.05 * (max(shown) - min(shown)), max(shown) + 0.05 * (max(shown) - min(shown)))
        near = [r["loglik"] + sign * r["se"] for r in s["rows"] if r["mode"] == "sequential" for sign in (-1, 1)] + [ex]
        close.set_ylim(min(near) - 0.1 * (max(near) - min(near)), max(near) + 0.1 * (max(near) - min(near)))
        wide.set_title(f"{s['oracle']} oracle, L = {s['L']}: every curve", fontsize=8)
        close.set_title(f"{s['oracle']}, L = {s['L']}, default grid up close: best exact PIT within N=L's rounds\n"
                        f"{h['gain']:+.2f} ± {h['gain_se']:.2f} nats over sequential N=L ({_share(h)})", fontsize=8)
    env = result["environment"]
    d = result["defaults"]
    fig.suptitle(f"Quality against sequential calls; defaults: grid={d['grid']}, rule={d['rule']}, final={d['final']}; "
                 f"{env['cpu']}, {env['date']}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output prefix (writes .json, .md, .png)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="full")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tables-only", action="store_true",
                   help="rebuild <out>.md and <out>.png from <out>.json (headlines recomputed), measuring nothing")
    args = p.parse_args(argv)
    out = Path(args.out)
    if args.tables_only:
        result = json.loads(out.with_suffix(".json").read_text())
        for s in result["settings"]:
            s["headline"] = headline(s["rows"], s["exact"])
    else:
        torch.set_num_threads(args.threads)
        start = time.time()
        result = run(args.preset, args.seed)
        result["environment"] = {"cpu": cpu_name(), "date": datetime.date.today().isoformat(),
                                 "torch": torch.__version__, "threads": torch.get_num_threads()}
        result["seconds"] = round(time.time() - start, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(result) + "\n")
    plot(result, out.with_suffix(".png"))
    print(f"wrote {out.with_suffix('.json')}, .md and .png ({result['seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
