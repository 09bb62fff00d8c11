"""GPU check and timing of the fused kernels (Triton, and every other CUDA backend) at real sizes.

    python bench/kernels_gpu.py --out bench/results        # writes bench/results/kernels_gpu.json

or ``bench.kernels_gpu.run(out_dir) -> dict`` (JSON-serialisable; called by ``bench/run_gpu.py``).
Stages run in order within a time budget (``budget_s``, default 65 s, which fits the 75 s that
``bench/run_gpu.py`` gives this section; ``--budget 150`` runs everything): a stage that would not
fit is skipped and listed as such, and after each stage the JSON is rewritten and a
``KERNELS_JSON=`` line printed, so a run cut short keeps what it measured.

1. ``copy``: device-to-device copy bandwidth (bytes read + written per second, median of CUDA-event
   timed copies of 2 GiB): the ceiling the sweep's bandwidth is compared with.
2. ``cases``: sweeps with bf16 ``N(0, 4)`` packed logits rows, one per position of every live window
   slice (the full form), or, in the ``packed`` cases, ``M`` rows (a fraction of ``W B L``) that a
   random row map shares out, as the sampler packs only the rows it needs. Every
   CUDA backend of ``ops.available_backends("cuda")`` is checked against the reference op on the same
   GPU and timed (median of CUDA-event timed calls after a warm-up that includes compilation), as is
   the reference composed in eager PyTorch. Equality covers ``states``, ``counts``, ``residual`` and
   ``invalid``; positions whose states differ are classified (see :func:`compare`) so that float
   near-ties (GPU ``log``/``exp`` differ from PyTorch's in the last bits) are told apart from real
   mismatches. Bandwidth counts the bytes that must move: each logits row the op has to read, once,
   plus the int64 states read and written (``x0``, ``prev``, ``states``) and the int32 counts.
   Cases, most important first: a full window (``W = 16``) at the start of a 1024-step run with
   V = 151936 (Qwen-size), B = 4, L = 1024; a tau-leaping step (``W = 1``) with V = 50257 (GPT-2),
   B = 64, L = 1024; a fill window in which every position is drawn once (the bandwidth-bound
   case), V = 50257, B = 16; the score parametrization (every masked row read in every slice); the
   sampler's largest launch, 128 slices (window and extension guesses) with M = 1% of W B L rows.
3. ``compiled_reference`` (after the tau-leaping step case): ``torch.compile`` of the reference sweep
   on that case, timed after compiling (compile time reported).
4. ``table``: the unmask-step table, B = 64, L = 1024, N = 1024, every rule, checked and timed.

``--device cpu`` is a dry run of the same code at tiny sizes (with ``TRITON_INTERPRET=1`` the Triton
backend runs in the interpreter): it checks the script, not the speed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pit_sampler import noise, ops, reference  # noqa: E402
from pit_sampler.rules import RULES, step_tables  # noqa: E402
from pit_sampler.schedules import LogLinear, time_grid  # noqa: E402

REJECT = RULES.index("reject")
DEVICE = torch.device("cuda")  # run() sets it; "cpu" is a dry run of the same code at tiny sizes
CASES = [
    dict(name="window-W16-V151936-B4", W=16, B=4, L=1024, V=151936, N=1024, kind="window", score=False),
    dict(name="step-W1-V50257-B64", W=1, B=64, L=1024, V=50257, N=1024, kind="window", score=False),
    dict(name="fill-W8-V50257-B16", W=8, B=16, L=1024, V=50257, N=7, kind="fill", score=False),
    dict(name="score-W4-V50257-B2", W=4, B=2, L=512, V=50257, N=256, kind="window", score=True),
    dict(name="packed-W128-V50257-B4", W=128, B=4, L=1024, V=50257, N=1024, kind="window", score=False, packed=0.01),
]
TINY_CASES = [  # the CPU dry run (Triton backend under TRITON_INTERPRET=1)
    dict(name="window-W4-V64-B2", W=4, B=2, L=24, V=64, N=32, kind="window", score=False),
    dict(name="step-W1-V40-B3", W=1, B=3, L=16, V=40, N=16, kind="window", score=False),
    dict(name="fill-W3-V37-B2", W=3, B=2, L=8, V=37, N=2, kind="fill", score=False),
    dict(name="score-W2-V37-B1", W=2, B=1, L=6, V=37, N=8, kind="window", score=True),
    dict(name="packed-W128-V37-B2", W=128, B=2, L=8, V=37, N=256, kind="window", score=False, packed=0.01),
]


def _time_ms(fn, reps: int, warmup: int = 1) -> float:
    """Median milliseconds of ``fn()`` over ``reps`` calls, each timed with CUDA events (wall clock on CPU)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        if DEVICE.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def copy_bandwidth(nbytes: int) -> dict:
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=DEVICE)
    dst = torch.empty_like(src)
    ms = _time_ms(lambda: dst.copy_(src), reps=10, warmup=2)
    return {"bytes": nbytes, "ms": ms, "gbps": 2 * nbytes / ms / 1e6}


def make_case(W, B, L, V, N, kind, score, seed=0, packed=None, **_):
    """Arguments of ``ops.sweep`` for one case, bf16 ``N(0, 4)`` logits: a row per position of every live
    slice, or (``packed``) ``max(1, packed W B L)`` rows shared out by a random row map."""
    dev = DEVICE
    g = torch.Generator(device=dev).manual_seed(seed)
    mask_id = V - 1
    seeds = noise.sample_seeds(seed, B, dev)
    tables = step_tables(LogLinear(), time_grid(N, "geometric" if kind == "window" else "uniform"), "reject").to(dev)
    x0 = torch.full((B, L), mask_id, dtype=torch.int64, device=dev)
    prompt = min(16, L // 4)
    x0[:, :prompt] = torch.randint(0, mask_id, (B, prompt), generator=g, device=dev)
    if kind == "fill":  # the last W steps of an N = W - 1 run, final fill included: every position draws
        steps = torch.arange(N - W + 1, N + 1, device=dev).view(W, 1).expand(W, B).contiguous()
    elif score:  # the first W steps
        steps = torch.arange(W, device=dev).view(W, 1).expand(W, B).contiguous()
    else:  # each sample's first W active steps (those at which some position unmasks), as PIT plans them
        table = reference.unmask_table(x0, seeds, tables.cdf, mask_id, REJECT)
        active = torch.zeros(B, N + 2, dtype=torch.bool, device=dev)
        active.scatter_(1, torch.where(table >= 0, table, N + 1), True)
        order = torch.where(active[:, : N + 1], torch.arange(N + 1, device=dev), N + 1).sort(1).values[:, :W]
        steps = torch.where(order <= N, order, -1).T.contiguous()
    if packed:
        M = max(1, int(packed * W * B * L))
        rows = torch.randint(0, M, (W, B, L), generator=g, device=dev)
    else:  # the full form: slice (w, b) owns rows slot * L + l
        live = steps >= 0
        slot = torch.full((W, B), -1, dtype=torch.int64, device=dev)
        slot[live] = torch.arange(int(live.sum()), device=dev)
        M = int(live.sum()) * L
        rows = torch.where(live.unsqueeze(-1), slot.unsqueeze(-1) * L + torch.arange(L, device=dev), -1)
    logits = torch.randn(M, V, generator=g, device=dev, dtype=torch.bfloat16).mul_(2)
    prev = x0.unsqueeze(0).expand(W, B, L).contiguous()
    rate = tables.rate
    if score:  # rates that give K = 0, 1, 2 in similar measure for these logits
        rate = torch.full_like(rate, 0.6 / (V * float(torch.exp(torch.tensor(2.0)))))
    return (logits, rows, steps, x0, prev, seeds, tables.cdf, rate, mask_id, 1.0, REJECT, score, False, True)


def rows_read(args, states) -> int:
    """Logits rows the op must read: each drawing position once (mean), each masked row per live slice (score)."""
    x0, steps, mask_id, score = args[3], args[2], args[8], args[11]
    before = torch.cat([x0.unsqueeze(0), states[:-1]])
    masked_live = (before == mask_id) & (steps >= 0).unsqueeze(-1)
    if score:
        return int(masked_live.sum())
    return int((masked_live & (states != mask_id)).sum())


def compare(args, got, want, limit: int = 200) -> dict:
    """Equality of the four outputs. Positions whose states differ are classified: ``decisions`` (the
    slice at which the position unmasks differs: integer decisions for the mean parametrization, float
    CDF comparisons for the score one), ``near_ties`` (same slice, tokens whose float64 scores
    ``logit / T + G`` agree to 1e-4: float rounding) and ``tokens`` (any other differing token)."""
    out = {name: bool(torch.equal(a, b)) for name, a, b in zip(("states", "counts", "residual", "invalid"), got, want)}
    logits, rows, steps, _, _, seeds, _, _, mask_id, temperature = args[:10]
    W = steps.shape[0]
    differ = (got[0] != want[0]).any(0).nonzero().tolist()
    decisions = near = tokens = 0
    for b, l in differ[:limit]:
        slices = []
        for states in (got[0], want[0]):
            drawn = (states[:, b, l] != mask_id).nonzero()
            slices.append(int(drawn[0]) if len(drawn) else W)
        if slices[0] != slices[1] or slices[0] == W:
            decisions += 1
            continue
        w = slices[0]
        pair = torch.stack([got[0][w, b, l], want[0][w, b, l]])
        bits = noise.gumbel_bits(seeds[b], steps[w, b], torch.tensor(l, device=pair.device), pair)
        scores = logits[rows[w, b, l], pair].double() / temperature + noise.gumbel_exact(bits)
        if abs(float(scores[0] - scores[1])) <= 1e-4 * max(1.0, float(scores.abs().max())):
            near += 1
        else:
            tokens += 1
    out.update(differing_positions=len(differ), examined=min(len(differ), limit), decisions=decisions,
               near_ties=near, tokens=tokens)
    exact_decisions = not args[11]  # mean: every decision is an integer comparison, so must agree
    out["ok"] = tokens == 0 and out["invalid"] and (not exact_decisions or (decisions == 0 and out["counts"]))
    return out


def bench_case(case: dict, backends: list[str], copy_gbps: float | None, eager_reps: int) -> dict:
    torch.cuda.empty_cache()  # the previous case's logits are garbage by now
    args = make_case(**case)
    want = reference.sweep(*args)
    n_rows = rows_read(args, want[0])
    W, B, L = args[1].shape
    esize = args[0].element_size()
    nbytes = n_rows * case["V"] * esize + W * B * L * (8 + 8 + 4) + B * L * 8
    res = dict(case, rows_read=n_rows, bytes=nbytes, bytes_logits=n_rows * case["V"] * esize, backends={})
    res["reference_eager_ms"] = _time_ms(lambda: reference.sweep(*args), reps=eager_reps, warmup=0)
    for name in backends:
        with ops.use_backend(name):
            got = ops.sweep(*args)
            entry = compare(args, got, want)
            ms = _time_ms(lambda: ops.sweep(*args), reps=20, warmup=2)
        gbps = nbytes / ms / 1e6
        entry.update(ms=ms, gbps=gbps, gbps_logits=res["bytes_logits"] / ms / 1e6,
                     copy_share=gbps / copy_gbps if copy_gbps else None,
                     speedup_vs_eager=res["reference_eager_ms"] / ms)
        res["backends"][name] = entry
    return res


def bench_table(backends: list[str], B: int, L: int, N: int) -> list[dict]:
    out = []
    g = torch.Generator(device=DEVICE).manual_seed(1)
    x = torch.zeros((B, L), dtype=torch.int64, device=DEVICE)  # mask id 0, a 16-token prompt
    x[:, :16] = torch.randint(1, 100, (B, 16), generator=g, device=DEVICE)
    seeds = noise.sample_seeds(1, B, DEVICE)
    for rule in RULES:
        cdf = step_tables(LogLinear(), time_grid(N), rule).cdf.to(DEVICE)
        args = (x, seeds, cdf, 0, RULES.index(rule))
        want = reference.unmask_table(*args)
        row = dict(rule=rule, B=B, L=L, N=N, backends={},
                   reference_eager_ms=_time_ms(lambda: reference.unmask_table(*args), reps=3, warmup=0))
        for name in backends:
            with ops.use_backend(name):
                ok = bool(torch.equal(ops.unmask_table(*args), want))
                ms = _time_ms(lambda: ops.unmask_table(*args), reps=20, warmup=2)
            row["backends"][name] = dict(ok=ok, ms=ms, speedup_vs_eager=row["reference_eager_ms"] / ms)
        out.append(row)
    return out


def bench_compiled_reference(case: dict, kernel_ms: dict) -> dict:
    """``torch.compile(reference.sweep)`` (default compiler; it graph-breaks at the data-dependent parts)."""
    torch.cuda.empty_cache()
    args = make_case(**case)
    compiled = torch.compile(reference.sweep)
    t0 = time.time()
    compiled(*args)
    compiled(*args)
    if DEVICE.type == "cuda":
        torch.cuda.synchronize()
    compile_s = time.time() - t0
    ms = _time_ms(lambda: compiled(*args), reps=3, warmup=0)
    return dict(case=case["name"], compile_s=compile_s, ms=ms,
                speedup=({name: ms / k for name, k in kernel_ms.items()}))


def run(out_dir, budget_s: float = 65.0, device: str = "cuda") -> dict:
    """Run every stage that fits in ``budget_s`` seconds; write ``out_dir/kernels_gpu.json``; return the results.

    ``device="cpu"`` is a dry run of the same code at tiny sizes (the Triton backend then needs
    ``TRITON_INTERPRET=1`` set before :mod:`pit_sampler` is imported)."""
    global DEVICE
    t_start = time.time()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    DEVICE = torch.device(device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        result = {"error": "no CUDA device"}
        (out_dir / "kernels_gpu.json").write_text(json.dumps(result, indent=1))
        return result
    tiny = DEVICE.type != "cuda"
    backends = [b for b in ops.available_backends(DEVICE) if b != "reference"]
    result = {"device": torch.cuda.get_device_name() if not tiny else "cpu (dry run)", "torch": torch.__version__,
              "backends": backends, "budget_s": budget_s, "skipped": [], "cases": []}
    try:
        import triton

        result["triton"] = triton.__version__
    except ImportError:
        result["triton"] = None

    def save():
        result["elapsed_s"] = time.time() - t_start
        (out_dir / "kernels_gpu.json").write_text(json.dumps(result, indent=1, default=str))
        print("KERNELS_JSON=" + json.dumps(result, default=str), flush=True)

    def left():
        return budget_s - (time.time() - t_start)

    result["copy"] = copy_bandwidth(1 << 20 if tiny else 2 << 30)
    save()
    cases = TINY_CASES if tiny else CASES
    for i, case in enumerate(cases):
        if left() < 12:
            result["skipped"].append(case["name"])
        else:
            try:
                result["cases"].append(bench_case(case, backends, result["copy"]["gbps"], eager_reps=1))
            except Exception as e:  # a failing case is recorded; the others still run
                result["cases"].append(dict(case, error=f"{type(e).__name__}: {e}"))
        save()
        if i == 1:  # torch.compile of the reference, on the tau-leaping step case, once it has been timed
            step = result["cases"][-1] if result["cases"] and "backends" in result["cases"][-1] else None
            if step is not None and step["W"] == 1 and left() > 25:
                try:
                    spec = {k: step[k] for k in ("name", "W", "B", "L", "V", "N", "kind", "score")}
                    result["compiled_reference"] = bench_compiled_reference(
                        spec, {name: e["ms"] for name, e in step["backends"].items()})
                except Exception as e:
                    result["compiled_reference"] = {"error": f"{type(e).__name__}: {e}"}
            else:
                result["skipped"].append("compiled_reference")
            save()
    if left() > 10:
        result["table"] = bench_table(backends, *((2, 64, 32) if tiny else (64, 1024, 1024)))
    else:
        result["skipped"].append("table")
    result["summary"] = summary(result)
    save()
    return result


def summary(result: dict) -> list[str]:
    lines = [f"copy bandwidth {result['copy']['gbps']:.0f} GB/s (read + write)"]
    for c in result["cases"]:
        if "error" in c:
            lines.append(f"{c['name']}: error {c['error']}")
            continue
        for name, e in c["backends"].items():
            lines.append(
                f"{c['name']} [{name}]: {'ok' if e['ok'] else 'MISMATCH'} ({e['near_ties']} near-ties), "
                f"{e['ms']:.3f} ms, {e['gbps']:.0f} GB/s = {e['copy_share']:.0%} of copy, "
                f"{e['speedup_vs_eager']:.0f}x eager reference ({c['rows_read']} rows read)"
            )
    for row in result.get("table", []):
        for name, e in row["backends"].items():
            lines.append(f"unmask_table {row['rule']} [{name}]: {'ok' if e['ok'] else 'MISMATCH'}, {e['ms']:.3f} ms, "
                         f"{e['speedup_vs_eager']:.0f}x eager")
    cr = result.get("compiled_reference")
    if cr and "error" not in cr:
        lines.append(f"torch.compile(reference) on {cr['case']}: {cr['ms']:.2f} ms after {cr['compile_s']:.0f} s "
                     f"compiling; kernels faster by " + ", ".join(f"{k} {v:.0f}x" for k, v in cr["speedup"].items()))
    if result["skipped"]:
        lines.append("skipped (time budget): " + ", ".join(result["skipped"]))
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="bench/results", help="folder for kernels_gpu.json")
    p.add_argument("--budget", type=float, default=65.0, help="seconds; later stages are skipped past it")
    p.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run at tiny sizes")
    a = p.parse_args(argv)
    result = run(a.out, a.budget, a.device)
    print("\n".join(result.get("summary", [result.get("error", "")])))
    return 0 if all(e.get("ok") for c in result.get("cases", []) for e in c.get("backends", {}).values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
