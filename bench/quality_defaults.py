"""Which sampler defaults are the most accurate: time grid x unmask rule x final step x ``t_min``,
scored against the package's exact oracles.

Two measurements, both with the exact oracles of :mod:`pit_sampler.testing` as perfect denoisers (so
every difference is the sampler's discretisation, none the model's):

* **Mean exact log-likelihood** ``E_q[log p(x)]`` of ``n`` samples ``x ~ q`` of
  :class:`~pit_sampler.TauLeapingSampler` (the sequential sampler; exact PIT draws the same tokens)
  under the oracle ``p``, next to that of exact samples (``oracle.sample``, whose mean is ``-H(p)``),
  for the mixture and HMM oracles at ``L = 16`` (8 tokens, seed 0: the oracles of issue 25's table)
  and every ``N`` in ``4, 8, ..., 1024``, every grid, rule and final step, and ``t_min`` in
  ``1e-2 .. 1e-5``; then a subset at ``L = 256``. ``E_q[log p] = -H(q) - KL(q || p)``, so a sampler
  that concentrates on likely sequences can score *above* exact samples: the metric is read together
  with the second one.
* **Exact KL divergence** ``KL(q || p)`` of the sampler's output law ``q`` on a tiny oracle (``L = 6``,
  4 tokens: all ``5**6`` partial sequences enumerated), by dynamic programming over the steps: a step
  with unmask probability ``u_j`` (the rule's ``P(unmask)``, the same for every masked position; the
  mean parametrization's key property) moves a partial sequence ``s`` to ``s'`` with probability
  ``u_j^k (1 - u_j)^(m - k) prod_{drawn l} p(x_l = s'_l | s)`` (``m`` masked in ``s``, ``k`` of them
  drawn); the final fill draws every masked position (``final="sample"``) or takes each one's argmax
  (``final="argmax"``).

Two more parts: ``--part kl-mc``, the Monte Carlo ``KL(q || p)`` at ``L = 16`` (:func:`log_q_estimate`:
``q(x)`` averaged over unmask schedules, which do not depend on the tokens); ``--part rounds``, the
rounds per sample of sequential tau-leaping and exact PIT (``W = 16``) on each grid, on the oracles and
the shipped text model (single-sample runs, tokens checked identical).

    python -m bench.quality_defaults --out bench/results/quality-defaults-cpu-2026-12-06   # 17 min, 1 thread
    python -m bench.quality_defaults --part kl-mc --out bench/results/quality-kl-cpu-2026-12-06      # 34 min
    python -m bench.quality_defaults --part rounds --out bench/results/quality-rounds-cpu-2026-12-06  # 21 min
    python -m bench.quality_defaults --preset tiny --out /tmp/qd                           # seconds

(times on 2 shared cores, other jobs running) write ``<out>.json`` (every row) and ``<out>.md`` (the
tables of docs/quality.md).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import time

import torch

from pit_sampler import TauLeapingSampler
from pit_sampler.schedules import GRIDS, LogLinear, time_grid
from pit_sampler.testing import TauLeapingLaw, make_oracle, unmask_probs

from .e2e import save_result

RULES = ("reject", "first", "tweedie")
FINALS = ("sample", "argmax")
MDLM = dict(rule="tweedie", grid="uniform", final="argmax")  # the law of MDLM's ddpm_cache sampler (issue 25)

PRESETS = {
    # L = 16: the full factorial; L = 256: grids x rules at t_min = 1e-3, final "sample" and the MDLM row
    "full": dict(short=dict(length=16, n=4000, steps=(4, 8, 16, 32, 64, 128, 256, 512, 1024),
                            t_mins=(1e-2, 1e-3, 1e-4, 1e-5)),
                 long=dict(length=256, n=500, steps=(64, 256, 1024)), kl_steps=(2, 4, 8, 16, 32, 64)),
    "tiny": dict(short=dict(length=16, n=200, steps=(4, 16), t_mins=(1e-3,)),
                 long=dict(length=32, n=50, steps=(8,)), kl_steps=(2,)),
}


@functools.cache
def oracle(name: str, length: int, num_tokens: int = 8):
    """The oracle of issue 25's table at ``length = 16``: ``make_oracle(name, num_tokens=8, length=16)``, seed 0."""
    return make_oracle(name, num_tokens=num_tokens, length=length)


def loglik(name: str, length: int, n: int, num_steps: int, seed: int = 0, **config) -> torch.Tensor:
    """float64 ``[n]``: ``log p(x_i)`` of ``n`` samples of :class:`TauLeapingSampler` (all-masked start,
    sampler seed ``seed``) with ``config`` (grid, rule, final, t_min; the rest at their defaults)."""
    orc = oracle(name, length)
    x = torch.full((n, length), orc.mask_id, dtype=torch.int64)
    sampler = TauLeapingSampler(orc, mask_id=orc.mask_id, vocab_size=orc.vocab_size, num_steps=num_steps, **config)
    return orc.log_prob(sampler.sample(x, seed=seed).tokens)


def exact_loglik(name: str, length: int, n: int, seed: int = 0) -> torch.Tensor:
    """float64 ``[n]``: ``log p(x_i)`` of exact samples (``oracle.sample``); its mean estimates ``-H(p)``."""
    orc = oracle(name, length)
    return orc.log_prob(orc.sample(n, generator=torch.Generator().manual_seed(seed)))


def summary(lp: torch.Tensor) -> dict:
    return dict(mean=float(lp.mean()), se=float(lp.std() / math.sqrt(len(lp))), n=len(lp))


# ------------------------------------------------------------------------------------------------
# exact output law on a tiny oracle
# ------------------------------------------------------------------------------------------------
def step_probs(num_steps: int, grid: str, rule: str, t_min: float = 1e-3) -> torch.Tensor:
    """float64 ``[N + 1]``: the unmask probability of each step on the log-linear schedule, the fill
    last (:func:`pit_sampler.testing.unmask_probs`)."""
    return unmask_probs(LogLinear(), time_grid(num_steps, grid, 1.0, t_min), rule)


def unmask_step_law(num_steps: int, grid: str, rule: str, t_min: float = 1e-3) -> torch.Tensor:
    """float64 ``[N + 1]``: ``P(a masked position unmasks at step j)``, ``j = 0..N`` (``N``: the final fill),
    from :func:`step_probs`: ``prod_{i < j} (1 - u_i) u_j``, and ``prod_{i < N} (1 - u_i)`` for the fill."""
    u = step_probs(num_steps, grid, rule, t_min)[:-1]
    survive = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1.0 - u, 0)])
    return torch.cat([survive[:-1] * u, survive[-1:]])


def log_q_estimate(orc, x: torch.Tensor, num_steps: int, grid: str, rule: str, draws: int, generator,
                   chunk: int = 65536) -> torch.Tensor:
    """float64 ``[n]``: ``log`` of a Monte Carlo estimate of the sampler's probability ``q(x)`` of each row.

    With the mean parametrization the unmask step ``S_l`` of each position is independent of the
    tokens and of the other positions (law :func:`unmask_step_law`), and positions unmasking at the
    same step draw independently from the conditionals given the earlier ones (``final="sample"``), so
    ``q(x) = E_S[f(x, S)]``, ``f(x, S) = prod_l p(x_l | x_{l'}: S_{l'} < S_l)``. The estimate averages
    ``f`` over ``draws`` schedules per row; its log is biased low (Jensen), less so with more draws."""
    n, L = x.shape
    xs = x.repeat_interleave(draws, 0)
    S = torch.multinomial(unmask_step_law(num_steps, grid, rule), xs.numel(), replacement=True,
                          generator=generator).view(-1, L)
    log_f = torch.zeros(len(xs), dtype=torch.float64)
    for a in range(0, len(xs), chunk):
        xa, Sa, fa = xs[a:a + chunk], S[a:a + chunk], log_f[a:a + chunk]
        for j in torch.unique(Sa).tolist():
            now = Sa == j
            rows = now.any(1)
            cond = orc.conditionals(torch.where(Sa[rows] < j, xa[rows], orc.mask_id))  # [r, L, K]
            lp = torch.log(cond.gather(2, xa[rows].unsqueeze(-1)).squeeze(-1))
            fa[rows] += torch.where(now[rows], lp, 0.0).sum(1)
    return torch.logsumexp(log_f.view(n, draws), 1) - math.log(draws)


def kl_monte_carlo(name: str, num_steps: int, grid: str, rule: str, n: int, draws: int, seed: int = 0) -> dict:
    """``KL(q || p) = E_q[log q(x) - log p(x)]`` and ``H(q)`` at ``L = 16`` from ``n`` samples of
    :class:`TauLeapingSampler` (``final="sample"``) with :func:`log_q_estimate` (``draws`` schedules per
    sample): a lower estimate of the KL (the log of the estimate is biased low)."""
    orc = oracle(name, 16)
    x = torch.full((n, 16), orc.mask_id, dtype=torch.int64)
    tokens = TauLeapingSampler(orc, mask_id=orc.mask_id, vocab_size=orc.vocab_size, num_steps=num_steps, grid=grid,
                               rule=rule, final="sample").sample(x, seed=seed).tokens
    log_p = orc.log_prob(tokens)
    log_q = log_q_estimate(orc, tokens, num_steps, grid, rule, draws, torch.Generator().manual_seed(seed + 1))
    d = log_q - log_p
    return dict(oracle=name, L=16, N=num_steps, grid=grid, rule=rule, n=n, draws=draws, kl=float(d.mean()),
                kl_se=float(d.std() / math.sqrt(n)), entropy=float(-log_q.mean()), loglik=float(log_p.mean()))


KL_MC = dict(steps=(4, 8, 32), configs=(("geometric", "reject"), ("uniform", "reject"), ("uniform", "tweedie"),
                                        ("cosine", "reject"), ("cosine", "tweedie")), n=500, draws=(256, 1024))


def run_kl_mc(seed: int = 0, log=print, spec: dict = KL_MC) -> dict:
    rows = []
    for name, N, (grid, rule), draws in itertools.product(("mixture", "hmm"), spec["steps"], spec["configs"], spec["draws"]):
        start = time.perf_counter()
        rows.append(kl_monte_carlo(name, N, grid, rule, spec["n"], draws, seed))
        rows[-1]["seconds"] = round(time.perf_counter() - start, 1)
        log(json.dumps(rows[-1]))
    return dict(part="kl-mc", rows=rows, seed=seed, exact_entropy={
        name: -summary(exact_loglik(name, 16, 16000, seed))["mean"] for name in ("mixture", "hmm")})


def markdown_kl_mc(result: dict) -> str:
    env, rows = result["environment"], result["rows"]
    draws = sorted({r["draws"] for r in rows})
    out = [f"# Monte Carlo KL(q || p) at L = 16 ({env['cpu']}, {env['date']})", "",
           f"`python -m bench.quality_defaults --part kl-mc`: {result['seconds']:.0f} s, torch {env['torch']}, "
           f"{env['threads']} thread. {rows[0]['n']} samples per cell of `TauLeapingSampler` (`final=\"sample\"`, "
           "t_min 1e-3), `log q(x)` estimated from " + " and ".join(map(str, draws)) + " unmask schedules per sample "
           "(`log_q_estimate`: biased low, so each KL is a lower estimate; the change between the two columns shows "
           "how far from converged). Cells: KL ± s.e. (nats), " + " / ".join(f"{d} schedules" for d in draws) + ".", ""]
    for name in ("mixture", "hmm"):
        sel = [r for r in rows if r["oracle"] == name]
        configs = list(dict.fromkeys((r["grid"], r["rule"]) for r in sel))
        out += [f"## {name} (H(p) = {result['exact_entropy'][name]:.2f} nats)", "",
                "| N | " + " | ".join(f"{g} {r}" for g, r in configs) + " |", "|---" * (1 + len(configs)) + "|"]
        for N in sorted({r["N"] for r in sel}):
            cells = []
            for g, rule in configs:
                by = {r["draws"]: r for r in sel if r["N"] == N and r["grid"] == g and r["rule"] == rule}
                cells.append(" / ".join(f"{by[d]['kl']:.3f} ± {by[d]['kl_se']:.3f}" for d in draws))
            out.append(f"| {N} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


ROUNDS = dict(grids=("geometric", "uniform", "cosine"), window=16,
              settings=(("mixture", 16, (4, 16, 64, 256), 64), ("hmm", 16, (4, 16, 64, 256), 64),
                        ("mixture", 256, (64, 256, 1024, 4096), 16), ("hmm", 256, (64, 256, 1024, 4096), 16),
                        ("text", 128, (32, 128, 512, 2048), 4)))


def run_rounds(seed: int = 0, log=print, spec: dict = ROUNDS) -> dict:
    """Rounds per sample of sequential tau-leaping and of exact PIT (``window``, ``tol=0``) per grid
    (rule ``reject``, ``final="sample"``): the mean over single-sample runs (``B = 1``) with the first
    ``m`` per-sample seeds of ``sample_seeds(seed, m)``; PIT's tokens are checked against sequential's.
    ``text``: the shipped text model (float64, batch-invariant) through ``HFMaskedLM``."""
    from pit_sampler import PITSampler
    from pit_sampler.noise import sample_seeds

    rows = []
    for name, L, steps, m in spec["settings"]:
        if name == "text":
            from pit_sampler.models import text

            tok = text.load_tokenizer()
            den = text.text_denoiser(text.load_text_model(), tok)
            common, mask_id = den.sampler_kwargs(), tok.mask_token_id
        else:
            den = oracle(name, L)
            common, mask_id = dict(mask_id=den.mask_id, vocab_size=den.vocab_size), den.mask_id
        x = torch.full((1, L), mask_id, dtype=torch.int64)
        seeds = sample_seeds(seed, m)
        for N, grid in itertools.product(steps, spec["grids"]):
            kw = dict(num_steps=N, grid=grid, rule="reject", final="sample", **common)
            start = time.perf_counter()
            seq = [TauLeapingSampler(den, **kw).sample(x, seed=seeds[i:i + 1]) for i in range(m)]
            pit = [PITSampler(den, window=spec["window"], **kw).sample(x, seed=seeds[i:i + 1]) for i in range(m)]
            if not all(torch.equal(a.tokens, b.tokens) for a, b in zip(seq, pit)):
                raise AssertionError(f"exact PIT differs from sequential: {name} L={L} N={N} {grid}")
            mean = lambda rs, f: sum(f(r) for r in rs) / m  # noqa: E731
            rows.append(dict(model=name, L=L, N=N, grid=grid, W=spec["window"], m=m,
                             seq_rounds=mean(seq, lambda r: r.rounds), pit_rounds=mean(pit, lambda r: r.rounds),
                             pit_nfe=mean(pit, lambda r: r.nfe), seconds=round(time.perf_counter() - start, 1)))
            log(json.dumps(rows[-1]))
    return dict(part="rounds", rows=rows, seed=seed)


def markdown_rounds(result: dict) -> str:
    env, rows = result["environment"], result["rows"]
    grids = list(dict.fromkeys(r["grid"] for r in rows))
    out = [f"# Rounds per sample by time grid: sequential and exact PIT ({env['cpu']}, {env['date']})", "",
           f"`python -m bench.quality_defaults --part rounds`: {result['seconds']:.0f} s, torch {env['torch']}, "
           f"{env['threads']} thread. Rule `reject`, `final=\"sample\"`, all-masked start, single-sample runs "
           f"(mean over the first m seeds of `sample_seeds({result['seed']}, m)`), exact PIT at W = {rows[0]['W']} "
           "(tokens identical to sequential in every run). Cells: sequential rounds / PIT rounds (PIT nfe).", "",
           "| model | L | N | m | " + " | ".join(grids) + " |", "|---" * (4 + len(grids)) + "|"]
    keys = list(dict.fromkeys((r["model"], r["L"], r["N"]) for r in rows))
    for model, L, N in keys:
        by = {r["grid"]: r for r in rows if (r["model"], r["L"], r["N"]) == (model, L, N)}
        cells = [f"{by[g]['seq_rounds']:.1f} / {by[g]['pit_rounds']:.1f} ({by[g]['pit_nfe']:.0f})" for g in grids]
        out.append(f"| {model} | {L} | {N} | {by[grids[0]]['m']} | " + " | ".join(cells) + " |")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------------
# the sweep
# ------------------------------------------------------------------------------------------------
def run(preset: str = "full", seed: int = 0, log=print) -> dict:
    cfg = PRESETS[preset]
    rows, exact = [], {}
    short = cfg["short"]
    for name in ("mixture", "hmm"):
        L, n = short["length"], short["n"]
        exact[f"{name} L={L}"] = summary(exact_loglik(name, L, n, seed))
        for N, grid, rule, final, t_min in itertools.product(short["steps"], GRIDS, RULES, FINALS, short["t_mins"]):
            start = time.perf_counter()
            lp = loglik(name, L, n, N, seed, grid=grid, rule=rule, final=final, t_min=t_min)
            rows.append(dict(oracle=name, L=L, N=N, grid=grid, rule=rule, final=final, t_min=t_min,
                             **summary(lp), seconds=round(time.perf_counter() - start, 2)))
        log(f"{name} L={L}: {sum(r['seconds'] for r in rows if r['oracle'] == name):.0f} s")
    long = cfg["long"]
    for name in ("mixture", "hmm"):
        L, n = long["length"], long["n"]
        exact[f"{name} L={L}"] = summary(exact_loglik(name, L, max(n, 4000), seed))
        configs = [dict(grid=g, rule=r, final="sample") for g in GRIDS for r in RULES] + [MDLM]
        for N, c in itertools.product(long["steps"], configs):
            start = time.perf_counter()
            lp = loglik(name, L, n, N, seed, t_min=1e-3, **c)
            rows.append(dict(oracle=name, L=L, N=N, t_min=1e-3, **c, **summary(lp),
                             seconds=round(time.perf_counter() - start, 2)))
            log(f"{name} L={L} N={N} {c}: {rows[-1]['mean']:.3f} ({rows[-1]['seconds']:.0f} s)")
    kl_rows = []
    for name in ("mixture", "hmm"):
        law = TauLeapingLaw(make_oracle(name, num_tokens=4, length=6))
        for N, grid, rule, final in itertools.product(cfg["kl_steps"], GRIDS, RULES, FINALS):
            q = law.run(step_probs(N, grid, rule), final)
            kl_rows.append(dict(oracle=name, L=6, K=4, N=N, grid=grid, rule=rule, final=final, **law.divergences(q)))
    return dict(rows=rows, exact=exact, kl=kl_rows, preset=preset, seed=seed)


# ------------------------------------------------------------------------------------------------
# tables
# ------------------------------------------------------------------------------------------------
def _pick(rows, **match):
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def _cell(rows, **match) -> str:
    (r,) = _pick(rows, **match)
    return f"{r['mean']:.2f}"


def markdown(result: dict) -> str:
    env, rows = result["environment"], result["rows"]
    out = [f"# Sampler defaults against exact oracles ({env['cpu']}, {env['date']})", "",
           f"`python -m bench.quality_defaults --preset {result['preset']}`: {result['seconds']:.0f} s, torch "
           f"{env['torch']}, {env['threads']} thread. Cells: mean exact log-likelihood (nats) of the samples of "
           f"`TauLeapingSampler` (log-linear schedule, all-masked start, sampler seed {result['seed']}); higher is "
           "closer to the oracle, and exact samples score `-H(p)` (a sampler can score above it by concentrating "
           "on likely sequences: read it with the exact KL tables at the end). `MDLM` = `rule=\"tweedie\", "
           "grid=\"uniform\", final=\"argmax\"` (the law of MDLM's ddpm_cache sampler).", ""]
    for (name, L) in sorted({(r["oracle"], r["L"]) for r in rows}, key=lambda k: (k[1], k[0])):
        sel = _pick(rows, oracle=name, L=L)
        ex = result["exact"][f"{name} L={L}"]
        steps = sorted({r["N"] for r in sel})
        n, se = sel[0]["n"], max(r["se"] for r in sel)
        out += [f"## {name}, L = {L} (exact samples: {ex['mean']:.2f} ± {ex['se']:.2f}; {n} samples per cell, "
                f"s.e. at most {se:.2f})", ""]
        t_mins = sorted({r["t_min"] for r in sel}, reverse=True)
        # grid x rule at t_min = 1e-3, final "sample", and the MDLM row
        head = [f"{g} {r}" for g in GRIDS for r in RULES]
        out += ["Grid x rule (`final=\"sample\"`, `t_min=1e-3`) and MDLM:", "",
                "| N | " + " | ".join(head) + " | MDLM |", "|---" * (len(head) + 2) + "|"]
        for N in steps:
            cells = [_cell(sel, N=N, grid=g, rule=r, final="sample", t_min=1e-3) for g in GRIDS for r in RULES]
            out.append(f"| {N} | " + " | ".join(cells) + f" | {_cell(sel, N=N, t_min=1e-3, **MDLM)} |")
        out.append("")
        if any(r["rule"] == "tweedie" and r["final"] == "sample" for r in sel) and any(
                r["rule"] == "tweedie" and r["final"] == "argmax" and r["grid"] != "uniform" for r in sel):  # the factorial
            out += ["Final step and `t_min` (rule `tweedie`; each cell `final=\"sample\"` / `\"argmax\"`):", "",
                    "| N | " + " | ".join(f"{g} t_min={t:g}" for g in GRIDS for t in t_mins) + " |",
                    "|---" * (1 + len(GRIDS) * len(t_mins)) + "|"]
            for N in steps:
                cells = [f"{_cell(sel, N=N, grid=g, rule='tweedie', final='sample', t_min=t)} / "
                         f"{_cell(sel, N=N, grid=g, rule='tweedie', final='argmax', t_min=t)}" for g in GRIDS for t in t_mins]
                out.append(f"| {N} | " + " | ".join(cells) + " |")
            out.append("")
    kl = result["kl"]
    for name in ("mixture", "hmm"):
        sel = _pick(kl, oracle=name)
        if not sel:
            continue
        out += [f"## Exact KL(q || p), {name} oracle, L = 6, 4 tokens (nats; `final=\"sample\"` / `\"argmax\"`)", "",
                "| N | " + " | ".join(f"{g} {r}" for g in GRIDS for r in RULES) + " |", "|---" * (1 + len(GRIDS) * len(RULES)) + "|"]
        for N in sorted({r["N"] for r in sel}):
            cells = []
            for g, r in itertools.product(GRIDS, RULES):
                (a,) = _pick(sel, N=N, grid=g, rule=r, final="sample")
                (b,) = _pick(sel, N=N, grid=g, rule=r, final="argmax")
                cells.append(f"{a['kl']:.4f} / {b['kl']:.4f}")
            out.append(f"| {N} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.quality_defaults", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output prefix (writes .json and .md)")
    p.add_argument("--part", choices=("sweep", "kl-mc", "rounds"), default="sweep",
                   help="sweep: log-likelihood tables and the exact KL at L = 6; kl-mc: Monte Carlo KL at L = 16; "
                        "rounds: sequential and exact-PIT rounds per grid")
    p.add_argument("--preset", choices=sorted(PRESETS), default="full")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    parts = {"sweep": (lambda: run(args.preset, args.seed), markdown), "kl-mc": (lambda: run_kl_mc(args.seed), markdown_kl_mc),
             "rounds": (lambda: run_rounds(args.seed), markdown_rounds)}
    measure, table = parts[args.part]
    result = measure()
    return save_result(result, args.out, table, start)


if __name__ == "__main__":
    main()
