"""Block diffusion with the exact prefix KV cache: sequential tau-leaping against exact PIT, block by block.

The model is the shipped block-causal text model (:mod:`pit_sampler.models.text_blocks`: a
``Qwen2ForCausalLM`` with two local layers, trained BD3-LM style on the fortunes corpus, float64 on the CPU, so calls are
batch invariant and exact Picard is bit for bit the sequential sample) through
:class:`~pit_sampler.block_causal.HFBlockCausalLM`, at ``L = 128`` all-masked positions (no prompt,
no ``eos_id``: every sample runs every block), the samplers' defaults otherwise (log-linear schedule,
cosine grid, rule ``reject``, mean parametrization). ``N`` is the number of steps of each block's own
process (``N = bl`` or ``256``). PIT is ``PITSampler(window=W, tol=0)``.

* **A. Rounds.** Per block length ``bl`` in {16, 32} and ``N`` in {bl, 256}: one batch of ``B = 8``
  (seed 0), sequential and PIT at ``W`` in {2, 4, 8, 16}, with the cache: ``block_rounds`` (model calls
  per block: mean, min, max over blocks), total rounds, the cache's encode calls (one per block after
  the first; not counted in ``rounds``), nfe, rows and head rows per round; and per sample: the
  mean total rounds of ``B = 1`` runs over 8 seeds. Every PIT run's tokens must equal the sequential
  tokens (B = 8 and each B = 1 seed), and the cached tokens the uncached ones (sequential, and PIT at
  ``W = 4`` or the part-B windows).
* **B. Token positions per generated token**: ``BlockResult.positions / (B L)`` (all positions the
  model processed: the calls' rows times their length, the cache's encodings), with and without the
  cache, sequential and PIT at ``W`` = 4, 8 (``N = 256``, ``B = 8``; from part A's runs).
* **C. CPU wall time** at ``B = 1`` and ``8`` (``bl = 16``, ``N = 256``): cached sequential against cached
  PIT at ``W = 4``, ``8`` and ``"auto"``, one untimed warm-up of each, then ``--pairs`` rounds of
  interleaved runs (seq, W=4, W=8, auto, seq, ...), a fresh sampler per run: median and range of each,
  and the median over rounds of the per-round ratio seq / PIT; the uncached sequential run once per
  ``B``. Seconds depend on the machine and its load (threads: ``--threads``, default torch's).
* **D. ESTIMATE (a roofline model, not a measurement)** of GPU wall time on an H200 (790e12 FLOP/s
  bf16 dense, 4.3e12 B/s HBM) for a GPT-2-small-like (124M) and a Llama-3-8B-like shape, bf16, generating
  ``L_gen = 1024`` tokens in blocks of ``n`` = 16 and 32 at ``B = 1`` and ``8``. It takes the measured
  rounds per block ``r``, rows (slices) per sample per round ``rho = nfe / rounds`` and head rows per
  sample per round ``h = logits_rows / B`` of part A (that ``bl``, ``N = 256``; the ``B = 1`` figures
  from the per-sample runs, the ``B = 8`` from the batch run) and **assumes that a big model's
  per-block convergence equals this model's** (and is the same in every block). Per call, with ``T``
  the query tokens, ``P`` the cached prefix, ``kv`` the keys of the call itself, ``H = h B`` head rows::

      FLOPs = 2 N_ne T + 2 V d H + 4 layers d T (P + kv)        (N_ne: non-embedding parameters)
      bytes = 2 (N_ne + V d)                                     (bf16 weights, head included, read once)
            + B P layers 2 kv_dim 2 + T layers 2 kv_dim 2         (KV cache read, KV of the call written)
      time  = max(FLOPs / 790e12, bytes / 4.3e12)

  Cached, block ``k`` (``P = k n``): ``r`` calls with ``T = rho B n``, ``kv = rho n`` (the ``W`` slices of a
  sample folded into one query sequence under a dense block-diagonal mask, as the adapter does), plus
  for ``k >= 1`` one encode call with ``T = B n``, ``P = (k - 1) n``, ``kv = n``, ``H = 0``. Uncached:
  ``r`` calls with ``T = rho B e_k``, ``P = 0``, ``kv = e_k`` (``e_k = (k + 1) n``: the whole prefix and the
  block under a dense block-causal mask). Summed over the ``1024 / n`` blocks. Activations, the
  embedding lookup, the logits' bytes and kernel launch latency are ignored; the KV cache is read
  once per call (the adapter today copies it per call and layer as well: the ``index_select`` and
  ``cat`` of ``pit_sampler.block_causal._prefix_layer_class``).

    python -m bench.blocks --out bench/results/blocks-cpu-2026-12-06 [--model DIR] [--quick] [--threads T]

writes ``<out>.json`` and ``<out>.md``. ``--quick``: one block length (16), ``W = 4``, ``N = bl``,
``B = 2`` (timing too), 2 seeds per sample, 2 timing rounds without ``"auto"`` (the smoke test's subset).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pit_sampler import PITSampler, TauLeapingSampler
from pit_sampler.models import text, text_blocks

from .e2e import save_result

LENGTH = 128
H200 = {"name": "H200 (ESTIMATE constants)", "flops": 790e12, "bandwidth": 4.3e12}
SHAPES = {  # bf16; d_attn = heads x head_dim = d for both
    "gpt2-124m": dict(layers=12, d=768, kv_dim=768, mlp=3072, glu=False, vocab=50257),
    "llama3-8b": dict(layers=32, d=4096, kv_dim=8 * 128, mlp=14336, glu=True, vocab=128256),
}
L_GEN = 1024
ESTIMATE_LABEL = ("ESTIMATE: a roofline model of an H200 from part A's measured rounds and rows, not a "
                  "measurement; assumes a big model's per-block convergence equals this model's")


@dataclass(frozen=True)
class Plan:
    """What to run: ``steps`` per block (``None``: ``bl``), ``main_steps`` the ``N`` of parts B-D."""

    block_lengths: tuple = (16, 32)
    steps: tuple = (None, 256)
    main_steps: int | None = 256
    windows: tuple = (2, 4, 8, 16)
    position_windows: tuple = (4, 8)
    batch: int = 8
    seeds: int = 8
    timing_bl: int = 16
    timing_batches: tuple = (1, 8)
    timing_windows: tuple = (4, 8, "auto")
    pairs: int = 5


QUICK = Plan(block_lengths=(16,), steps=(None,), main_steps=None, windows=(4,), position_windows=(4,), batch=2,
             seeds=2, timing_batches=(2,), timing_windows=(4,), pairs=2)


def load(model_dir) -> tuple:
    """``(tokenizer, model)``: the tokenizer saved with the model if there is one, else the shipped one."""
    model_dir = Path(model_dir)
    tok = text.load_tokenizer(model_dir) if (model_dir / "tokenizer.json").is_file() else text.load_tokenizer()
    return tok, text_blocks.load_block_model(model_dir)


def sampler(den, steps: int, window, cache: bool):
    """A fresh sampler: sequential tau-leaping (``window=None``) or exact PIT (``tol=0``)."""
    kw = dict(num_steps=steps, cache=cache, **den.sampler_kwargs())
    return TauLeapingSampler(den, **kw) if window is None else PITSampler(den, window=window, tol=0, **kw)


def summary(r) -> dict:
    """The counts of one block run ``r`` (a ``BlockResult``): rounds (model calls of the denoising
    steps), the cache's encode calls, per-block rounds, nfe, rows and head (logits) rows per round
    over the batch, positions processed."""
    B = r.tokens.shape[0]
    br = r.block_rounds
    return dict(rounds=r.rounds, encodes=r.encodes, calls=r.rounds + r.encodes, block_rounds=br,
                block_rounds_mean=sum(br) / len(br), block_rounds_min=min(br), block_rounds_max=max(br),
                nfe=round(r.nfe, 3), rows_per_round=round(r.nfe * B / r.rounds, 3),
                head_rows_per_round=round(r.logits_rows, 3), positions=r.positions)


def per_sample(den, steps: int, window, seeds: int, reference: dict | None) -> tuple[dict, dict]:
    """Cached ``B = 1`` runs over ``seeds`` seeds: mean rounds, nfe and head rows per round, and their
    tokens (``{seed: tokens}``); with ``reference`` (the sequential tokens), whether each equals it."""
    x = torch.full((1, LENGTH), den.mask_id, dtype=torch.int64)
    out, tokens = [], {}
    for s in range(seeds):
        r = sampler(den, steps, window, True).sample(x, seed=s)
        out.append(r)
        tokens[s] = r.tokens
    rounds = [r.rounds for r in out]
    row = dict(rounds=rounds, rounds_mean=statistics.fmean(rounds),
               nfe_mean=statistics.fmean(r.nfe for r in out),
               head_rows_per_round=sum(r.logits_rows * r.rounds for r in out) / sum(rounds))
    if reference is not None:
        row["identical"] = all(torch.equal(tokens[s], reference[s]) for s in tokens)
    return row, tokens


def rounds_config(den, bl: int, steps: int, plan: Plan, uncached_windows: tuple) -> list[dict]:
    """Part A (and B's runs) for one ``(bl, N)``: a row per sampler (sequential, then each ``W``) with
    the cached batch run, the per-sample runs, the uncached run where ``uncached_windows`` asks
    (``None`` stands for sequential), and the token checks."""
    x = torch.full((plan.batch, LENGTH), den.mask_id, dtype=torch.int64)
    rows, seq_tokens, seq_samples = [], None, None
    for window in (None, *plan.windows):
        r = sampler(den, steps, window, True).sample(x, seed=0)
        row = dict(bl=bl, N=steps, B=plan.batch, sampler="seq" if window is None else f"W={window}", window=window,
                   cached=summary(r))
        row["per_sample"], samples = per_sample(den, steps, window, plan.seeds, seq_samples)
        if window is None:
            seq_tokens, seq_samples = r.tokens, samples
        else:
            row["identical"] = bool(torch.equal(r.tokens, seq_tokens))
        if window in uncached_windows:
            u = sampler(den, steps, window, False).sample(x, seed=0)
            row["uncached"] = summary(u)
            row["cached_equals_uncached"] = bool(torch.equal(u.tokens, r.tokens))
        rows.append(row)
        print(f"A bl={bl} N={steps} {row['sampler']}: rounds {r.rounds} {r.block_rounds}, nfe {r.nfe:.1f}, "
              f"identical {row.get('identical', True)}, cached=uncached {row.get('cached_equals_uncached', '-')}",
              flush=True)
    seq = rows[0]["cached"]["rounds"], rows[0]["per_sample"]["rounds_mean"]
    for row in rows:
        row["rounds_ratio"] = seq[0] / row["cached"]["rounds"]
        row["per_sample_rounds_ratio"] = seq[1] / row["per_sample"]["rounds_mean"]
    return rows


def positions_table(rows: list[dict], plan: Plan) -> list[dict]:
    """Part B from part A's rows: positions the model processed per generated token, cached and not."""
    out = []
    for row in rows:
        if "uncached" not in row or row["N"] != (plan.main_steps or row["bl"]):
            continue
        tokens = row["B"] * LENGTH
        cached, uncached = row["cached"]["positions"] / tokens, row["uncached"]["positions"] / tokens
        out.append(dict(bl=row["bl"], N=row["N"], B=row["B"], sampler=row["sampler"], cached=round(cached, 3),
                        uncached=round(uncached, 3), ratio=round(uncached / cached, 3)))
    return out


def timed(den, steps: int, window, cache: bool, x) -> tuple[float, torch.Tensor]:
    """Seconds of one ``sample`` call of a fresh sampler (construction included), and its tokens."""
    start = time.perf_counter()
    r = sampler(den, steps, window, cache).sample(x, seed=0)
    return time.perf_counter() - start, r.tokens


def timing(den, steps: int, batch: int, plan: Plan) -> dict:
    """Part C at one batch size: warm-up, ``plan.pairs`` interleaved rounds, the uncached run once."""
    x = torch.full((batch, LENGTH), den.mask_id, dtype=torch.int64)
    names = [None, *plan.timing_windows]
    _, reference = timed(den, steps, None, True, x)
    for w in plan.timing_windows:
        timed(den, steps, w, True, x)  # warm-up
    times = {w: [] for w in names}
    identical = True
    for _ in range(plan.pairs):
        for w in names:
            s, tokens = timed(den, steps, w, True, x)
            times[w].append(s)
            identical &= torch.equal(tokens, reference)
    uncached, tokens = timed(den, steps, None, False, x)
    identical &= torch.equal(tokens, reference)
    row = dict(B=batch, N=steps, bl=den.block_length, identical=bool(identical), uncached_seq_s=round(uncached, 4),
               seq=_stats(times[None]), pit={})
    for w in plan.timing_windows:
        ratios = [a / b for a, b in zip(times[None], times[w])]
        row["pit"][f"W={w}"] = dict(**_stats(times[w]), ratio_median=round(statistics.median(ratios), 3),
                                   ratios=[round(q, 3) for q in ratios])
    print(f"C B={batch}: seq {row['seq']['median']:.3f} s, " + ", ".join(
        f"{k} {v['median']:.3f} s ({v['ratio_median']:.2f}x)" for k, v in row["pit"].items()), flush=True)
    return row


def _stats(times: list[float]) -> dict:
    return dict(median=round(statistics.median(times), 4), min=round(min(times), 4), max=round(max(times), 4),
                times=[round(t, 4) for t in times])


# -- part D: the roofline ESTIMATE (module docstring) -------------------------------------------------


def shape_facts(s: dict) -> dict:
    """Non-embedding parameters, head parameters ``V d`` and KV bytes per token (bf16) of a shape."""
    d, layers = s["d"], s["layers"]
    per_layer = 2 * d * d + 2 * d * s["kv_dim"] + (3 if s["glu"] else 2) * d * s["mlp"]
    return dict(non_embedding=layers * per_layer, head=s["vocab"] * d, kv_bytes=layers * 2 * s["kv_dim"] * 2)


def call_seconds(s: dict, T: float, P: int, kv: float, head_rows: float, B: int, hw: dict = H200) -> tuple:
    """``(seconds, compute bound)`` of one call: ``T`` query tokens, prefix ``P`` cached per sample,
    ``kv`` in-call keys per query, ``head_rows`` output-head rows, ``B`` samples."""
    f = shape_facts(s)
    flops = 2 * f["non_embedding"] * T + 2 * f["head"] * head_rows + 4 * s["layers"] * s["d"] * T * (P + kv)
    nbytes = 2 * (f["non_embedding"] + f["head"]) + (B * P + T) * f["kv_bytes"]
    compute, memory = flops / hw["flops"], nbytes / hw["bandwidth"]
    return max(compute, memory), compute >= memory


def generation_seconds(s: dict, n: int, B: int, m: dict, cached: bool, length: int = L_GEN) -> tuple:
    """``(seconds, share of compute-bound calls)`` of generating ``length`` tokens in blocks of ``n``
    with ``m`` = measured ``rounds_per_block``, ``rows`` (per sample per round), ``head_rows`` (per
    sample per round); cached (plus one encode per block after the first) or not."""
    total, bound, calls = 0.0, 0, 0
    for k in range(length // n):
        P, e = k * n, (k + 1) * n
        if cached:
            step = call_seconds(s, m["rows"] * B * n, P, m["rows"] * n, m["head_rows"] * B, B)
            if k:
                enc = call_seconds(s, B * n, P - n, n, 0, B)
                total, bound, calls = total + enc[0], bound + enc[1], calls + 1
        else:
            step = call_seconds(s, m["rows"] * B * e, 0, e, m["head_rows"] * B, B)
        total += m["rounds_per_block"] * step[0]
        bound, calls = bound + m["rounds_per_block"] * step[1], calls + m["rounds_per_block"]
    return total, bound / calls


def measured(rows: list[dict], bl: int, steps: int) -> dict:
    """``{(B, sampler): {rounds_per_block, rows, head_rows}}`` from part A's rows at ``(bl, N)``: the
    batch run's (``B`` = its batch) and the per-sample runs' (``B = 1``)."""
    blocks, out = math.ceil(LENGTH / bl), {}
    for row in rows:
        if row["bl"] != bl or row["N"] != steps:
            continue
        c, p = row["cached"], row["per_sample"]
        out[row["B"], row["sampler"]] = dict(rounds_per_block=c["rounds"] / blocks, rows=c["rows_per_round"] / row["B"],
                                             head_rows=c["head_rows_per_round"] / row["B"])
        out[1, row["sampler"]] = dict(rounds_per_block=p["rounds_mean"] / blocks, rows=p["nfe_mean"] / p["rounds_mean"],
                                      head_rows=p["head_rows_per_round"])
    return out


def _order(item) -> tuple:
    """``(B, window)`` order of :func:`measured`'s items, sequential (window 0) first."""
    (B, smp), _ = item
    return B, 0 if smp == "seq" else int(smp[2:])


def estimate(rows: list[dict], plan: Plan) -> list[dict]:
    """Part D's table: per shape, block length, batch and sampler the estimated milliseconds (cached;
    sequential also uncached) and the speed-ups, from part A's measured rounds and rows."""
    out = []
    for name, s in SHAPES.items():
        for bl in plan.block_lengths:
            m = measured(rows, bl, plan.main_steps or bl)
            seq = {B: generation_seconds(s, bl, B, mm, True)[0] for (B, smp), mm in m.items() if smp == "seq"}
            for (B, smp), mm in sorted(m.items(), key=_order):
                ms, share = generation_seconds(s, bl, B, mm, True)
                row = dict(shape=name, bl=bl, B=B, sampler=smp, measured={k: round(v, 3) for k, v in mm.items()},
                           cached_ms=round(1e3 * ms, 3), ms_per_token=round(1e3 * ms / (B * L_GEN), 5),
                           compute_bound_share=round(share, 3), speedup_vs_seq=round(seq[B] / ms, 3))
                if smp == "seq":
                    un, _ = generation_seconds(s, bl, B, mm, False)
                    row.update(uncached_ms=round(1e3 * un, 3), cached_vs_uncached=round(un / ms, 3))
                out.append(row)
    return out


# -- the run and its report ---------------------------------------------------------------------------


def run(out: str, model_dir=text_blocks.BLOCK_MODEL_DIR, quick: bool = False, threads: int | None = None,
        plan: Plan | None = None) -> dict:
    """Parts A-D (module docstring) of ``plan`` (default: the full one, or :data:`QUICK`); writes
    ``<out>.json`` and ``<out>.md`` and returns the result. Raises ``AssertionError`` after writing if
    any run's tokens differed from the sequential (or cached) ones."""
    if threads:
        torch.set_num_threads(threads)
    plan, started = plan or (QUICK if quick else Plan()), time.time()
    tok, model = load(model_dir)
    rows = []
    for bl in plan.block_lengths:
        den = text_blocks.block_denoiser(model, tok, bl)
        for N in plan.steps:
            steps = N or bl
            main = steps == (plan.main_steps or bl)
            rows += rounds_config(den, bl, steps, plan, (None, *plan.position_windows) if main else (None, plan.position_windows[0]))
    den = text_blocks.block_denoiser(model, tok, plan.timing_bl)
    timings = [timing(den, plan.main_steps or plan.timing_bl, B, plan) for B in plan.timing_batches]
    checks = [r.get("identical", True) and r.get("cached_equals_uncached", True) and r["per_sample"].get("identical", True)
              for r in rows] + [t["identical"] for t in timings]
    result = dict(model=str(model_dir), parameters=sum(p.numel() for p in model.parameters()), L=LENGTH,
                  plan=asdict(plan), quick=quick, identical=all(checks), rounds=rows,
                  positions=positions_table(rows, plan), timing=timings,
                  estimate=dict(label=ESTIMATE_LABEL, hardware=H200, shapes=SHAPES, L_gen=L_GEN,
                                assumptions=ASSUMPTIONS, rows=estimate(rows, plan)))
    save_result(result, out, markdown, started)
    if not result["identical"]:
        raise AssertionError("a PIT or uncached run's tokens differ from the cached sequential tokens (see the json)")
    return result


ASSUMPTIONS = [
    "per-block rounds and rows per round as measured here (that block length, N = 256), in every block of a "
    "1024-token generation and for a big model: its per-block convergence assumed equal to this model's",
    "bf16 weights (2 bytes/param, head included, read once per call); KV cache read once per call; the call's "
    "new keys/values written; activations, embedding lookup, logits bytes and launch latency ignored",
    "head rows = the measured packed request per round (about the positions drawn in the call's slices)",
    "cached: the W slices of a sample folded into one query sequence (kv = rho n in-call keys, dense mask); "
    "one encode call per block after the first; uncached: every call recomputes prefix + block (kv = e_k)",
]


def markdown(result: dict) -> str:
    """The four parts as tables."""
    env = result["environment"]
    lines = [f"# Block diffusion with the prefix KV cache: sequential vs exact PIT ({env['cpu']}, {env['date']})", "",
             f"Model `{result['model']}` ({result['parameters'] / 1e6:.2f}M parameters, float64, sdpa), L = "
             f"{result['L']} all masked, no EOS, sampler defaults (cosine grid, rule `reject`), PIT `tol=0`. torch "
             f"{env['torch']}, {env['threads']} thread(s), {result['seconds']:.0f} s. Tokens identical (PIT = "
             f"sequential, cached = uncached) in every run: **{result['identical']}**.", ""]
    lines += _md_rounds(result) + _md_positions(result) + _md_timing(result) + _md_estimate(result)
    return "\n".join(lines)


def _md_rounds(result: dict) -> list[str]:
    lines = ["## A. Model calls per block and per sample (cached)", "",
             "`block rounds`: calls per block, mean [min, max] over blocks (B = batch run). `calls` = rounds + the "
             "cache's encode calls. `per sample`: mean total rounds of B = 1 runs over the seeds.", "",
             "| bl | N | sampler | block rounds | rounds | calls | seq/PIT | nfe | per sample | seq/PIT | identical |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in result["rounds"]:
        c, p = r["cached"], r["per_sample"]
        ok = r.get("identical", True) and p.get("identical", True) and r.get("cached_equals_uncached", True)
        lines.append(f"| {r['bl']} | {r['N']} | {r['sampler']} | {c['block_rounds_mean']:.2f} [{c['block_rounds_min']}, "
                     f"{c['block_rounds_max']}] | {c['rounds']} | {c['calls']} | {r['rounds_ratio']:.2f}x | {c['nfe']:.1f} | "
                     f"{p['rounds_mean']:.2f} | {r['per_sample_rounds_ratio']:.2f}x | {ok} |")
    return lines + [""]


def _md_positions(result: dict) -> list[str]:
    lines = ["## B. Token positions the model processed per generated token", "",
             "| bl | N | B | sampler | cached | uncached | uncached / cached |", "|---|---|---|---|---|---|---|"]
    for r in result["positions"]:
        lines.append(f"| {r['bl']} | {r['N']} | {r['B']} | {r['sampler']} | {r['cached']:.2f} | {r['uncached']:.2f} | "
                     f"{r['ratio']:.2f}x |")
    return lines + [""]


def _md_timing(result: dict) -> list[str]:
    lines = ["## C. CPU wall time, cached (seconds per `sample` call, fresh sampler)", "",
             "Median [min, max] over the interleaved rounds; speed-up: median of the per-round ratios seq / PIT.", "",
             "| B | bl | N | uncached seq | cached seq | sampler | cached PIT | speed-up | identical |",
             "|---|---|---|---|---|---|---|---|---|"]
    for t in result["timing"]:
        s = t["seq"]
        for name, p in t["pit"].items():
            lines.append(f"| {t['B']} | {t['bl']} | {t['N']} | {t['uncached_seq_s']:.3f} | {s['median']:.3f} [{s['min']:.3f}, "
                         f"{s['max']:.3f}] | {name} | {p['median']:.3f} [{p['min']:.3f}, {p['max']:.3f}] | "
                         f"{p['ratio_median']:.2f}x | {t['identical']} |")
    return lines + [""]


def _md_estimate(result: dict) -> list[str]:
    e = result["estimate"]
    hw = e["hardware"]
    lines = ["## D. ESTIMATE: H200 roofline (not a measurement)", "", f"**{e['label']}.** Constants: "
             f"{hw['flops']:.3g} FLOP/s bf16 dense, {hw['bandwidth']:.3g} B/s HBM; L_gen = {e['L_gen']}. Formula: "
             "module docstring of `bench/blocks.py`. Assumptions: " + "; ".join(e["assumptions"]) + ".", "",
             "| shape | bl | B | sampler | rounds/block | rows/round | cached ms | ms/token | compute-bound calls | "
             "vs cached seq | uncached seq ms | cached/uncached |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in e["rows"]:
        m = r["measured"]
        un = f"{r['uncached_ms']:.1f} | {r['cached_vs_uncached']:.2f}x" if "uncached_ms" in r else "- | -"
        lines.append(f"| {r['shape']} | {r['bl']} | {r['B']} | {r['sampler']} | {m['rounds_per_block']:.2f} | {m['rows']:.2f} | "
                     f"{r['cached_ms']:.1f} | {r['ms_per_token']:.4f} | {r['compute_bound_share']:.2f} | "
                     f"{r['speedup_vs_seq']:.2f}x | {un} |")
    return lines + ["", "ms/token: total ms / (B L_gen)."]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.blocks", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output prefix (writes .json and .md)")
    p.add_argument("--model", default=str(text_blocks.BLOCK_MODEL_DIR), help="block model folder (default: shipped)")
    p.add_argument("--quick", action="store_true", help="a tiny subset (bl 16, W = 4, N = bl, B = 2, 2 rounds)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    return run(args.out, args.model, args.quick, args.threads)


if __name__ == "__main__":
    main()
