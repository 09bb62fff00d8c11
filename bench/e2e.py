"""End-to-end benchmark: sequential tau-leaping (skip-inactive) against PIT at several windows.

For every configuration of a preset (model or oracle, sequence length ``L``, batch ``B``, steps ``N``,
grid) it runs the sequential baseline, then ``PITSampler`` (exact mode, ``tol = 0``) at each window,
from an all-masked start with the same seed, and records wall time, ``rounds`` (sequential denoiser
calls), ``nfe`` (rows evaluated per sample), peak memory (the largest logits tensor, and on CUDA the
allocator's peak), whether PIT's tokens are identical to the baseline's (and the share that agree),
and the Picard residual per iteration.

Settings: ``transformer`` (:class:`bench.models.BenchTransformer`, random weights) and ``synthetic``
(a :mod:`pit_sampler.testing` oracle's exact conditionals plus a small transformer's forward pass as
the cost of each call). On CUDA, both samplers call the denoiser through
:class:`bench.models.GraphedDenoiser` (CUDA graphs per row bucket); timings are medians of repeated
runs after a warm-up run, with the device synchronised around each run. On CPU every run is timed
once (ratios from one run on a possibly busy machine; absolute times are not comparable).

    python -m bench.e2e --preset cpu --device cpu --out bench/results/cpu-2026-11-22

writes ``<out>.json``, ``<out>.md`` and ``<out>-*.png`` (see :mod:`bench.plot`). Configurations run in
the preset's order (most important first) until the time budget (``--budget`` seconds) runs out; the
rest are listed as skipped. The JSON is rewritten after every run, so a killed run keeps its rows.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import pit_sampler
from pit_sampler import PITSampler, TauLeapingSampler, ops
from pit_sampler.testing import make_oracle

from .models import GraphedDenoiser, OracleDenoiser, Probe, batch_invariance, make_transformer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
REP_TARGET_S = 3.0  # on CUDA, timed repetitions are cut so that each run's reps take about this long


@dataclass(frozen=True)
class Config:
    """One end-to-end comparison: the baseline and PIT at each of ``windows``.

    ``setting="transformer"``: ``model`` is a shape of :data:`bench.models.SHAPES`.
    ``setting="synthetic"``: ``model`` is an oracle name, with ``num_tokens`` clean tokens, and each
    call also runs a ``cost`` transformer. ``dtype`` is the network's dtype.
    """

    setting: str
    model: str
    length: int
    batch: int
    steps: int
    grid: str
    windows: tuple[int, ...]
    dtype: str = "float32"
    cost: str = "cost"
    num_tokens: int = 16

    @property
    def name(self) -> str:
        return f"{self.setting}/{self.model}/{self.dtype}/L{self.length}/B{self.batch}/N{self.steps}/{self.grid}"


def _grid(setting, model, lengths, batches, steps, grids, windows, **kw) -> list[Config]:
    return [
        Config(setting, model, L, B, N, g, tuple(windows), **kw)
        for L in lengths
        for B in batches
        for N in steps
        for g in grids
    ]


T, S = "transformer", "synthetic"
PRESETS: dict[str, dict] = {
    "tiny": dict(
        configs=_grid(T, "tiny", [32], [1, 2], [32], ["geometric", "uniform"], [4, 8])
        + _grid(S, "mixture", [32], [1], [64], ["uniform"], [4, 8], cost="tiny"),
        reps=2,
        max_logits_gb=1.0,
    ),
    "cpu": dict(
        configs=_grid(T, "small", [256], [1], [128], ["geometric"], [4, 8, 16, 32])
        + _grid(S, "mixture", [256], [1], [1024], ["uniform"], [8, 32, 64])
        + _grid(S, "hmm", [256], [1], [1024], ["geometric"], [8, 32, 64])
        + _grid(T, "small", [256], [1], [128], ["uniform"], [4, 8, 16, 32])
        + _grid(T, "small", [256], [4], [128], ["geometric", "uniform"], [8, 32])
        + _grid(T, "small", [256], [1], [256], ["geometric", "uniform"], [8, 32]),
        reps=1,
        max_logits_gb=2.0,
    ),
    "gpu": dict(
        configs=_grid(S, "mixture", [256], [1], [1024], ["uniform"], [16, 32, 64], dtype="bfloat16")
        + _grid(T, "gpt2-small", [256], [1], [1024], ["geometric"], [4, 8, 16, 32], dtype="bfloat16")
        + _grid(T, "gpt2-small", [256], [4], [1024], ["geometric"], [4, 8, 16], dtype="bfloat16")
        + _grid(T, "gpt2-small", [256], [1, 4], [1024], ["uniform"], [8, 16, 32], dtype="bfloat16")
        + _grid(T, "gpt2-small", [1024], [1], [1024], ["geometric"], [4, 8, 16], dtype="bfloat16")
        + _grid(S, "mixture", [256], [1, 4], [1024], ["geometric"], [16, 32, 64], dtype="bfloat16")
        + _grid(T, "gpt2-small", [256], [1], [1024], ["geometric"], [8, 16], dtype="float32")
        + _grid(T, "small", [256], [1, 4, 16], [1024], ["geometric"], [8, 16, 32, 64], dtype="bfloat16")
        + _grid(T, "gpt2-small", [1024], [4], [1024], ["geometric"], [4, 8], dtype="bfloat16")
        + _grid(T, "gpt2-small", [256], [16], [1024], ["geometric"], [2, 4, 8], dtype="bfloat16")
        + _grid(T, "gpt2-small", [256], [1, 4], [128, 256], ["geometric", "uniform"], [4, 8, 16], dtype="bfloat16")
        + _grid(T, "small", [1024], [1, 4, 16], [1024], ["geometric", "uniform"], [8, 16, 32], dtype="bfloat16")
        + _grid(S, "hmm", [256], [1], [1024], ["geometric"], [16, 32, 64], dtype="bfloat16"),
        reps=3,
        max_logits_gb=16.0,
    ),
}


def _file(out: str | Path, suffix: str) -> Path:
    """``<out><suffix>`` (``out`` is a prefix, not a file name with an extension)."""
    return Path(f"{out}{suffix}")


def _logits_bytes(cfg: Config) -> int:
    """Bytes per logits element: the network's dtype; oracle logits are float32."""
    return torch.finfo(DTYPES[cfg.dtype] if cfg.setting == "transformer" else torch.float32).bits // 8


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Denoisers:
    """Builds each config's denoiser, caching networks by (shape, length, vocab, dtype)."""

    def __init__(self, device: torch.device):
        self.device, self.nets, self.invariance, self.warm = device, {}, {}, False

    def net(self, shape: str, length: int, dtype: str, vocab_size: int | None = None):
        key = (shape, length, vocab_size, dtype)
        if key not in self.nets:
            net = make_transformer(shape, length, vocab_size=vocab_size, dtype=DTYPES[dtype], device=self.device)
            with torch.no_grad():
                net(torch.zeros(1, length, dtype=torch.int64, device=self.device))  # one-off start-up costs
            self.nets[key] = net
        return self.nets[key]

    def build(self, cfg: Config):
        """``(denoiser, mask_id, vocab_size)`` for ``cfg``; records the network's batch invariance once."""
        if cfg.setting == "transformer":
            den = self.net(cfg.model, cfg.length, cfg.dtype)
            inv_key = f"{cfg.model}/{cfg.dtype}/L{cfg.length}"
        else:
            oracle = make_oracle(cfg.model, 0, num_tokens=cfg.num_tokens, length=cfg.length)
            cost = self.net(cfg.cost, cfg.length, cfg.dtype, vocab_size=oracle.vocab_size)
            den = OracleDenoiser(oracle, cost, self.device)
            inv_key = f"{cfg.model}+{cfg.cost}/{cfg.dtype}/L{cfg.length}"
        with torch.no_grad():
            if inv_key not in self.invariance:
                self.invariance[inv_key] = batch_invariance(den, den.vocab_size, cfg.length, 8, self.device)
            if not self.warm:  # the process's first sampler run pays one-off costs (op loading, first kernels)
                x = torch.full((1, cfg.length), den.mask_id, dtype=torch.int64, device=self.device)
                PITSampler(den, window=2, mask_id=den.mask_id, num_steps=4).sample(x, 0)
                self.warm = True
        return den, den.mask_id, den.vocab_size


def _measure(make_sampler, den, cfg: Config, x, max_rows: int, reps: int, graphs: bool, device) -> tuple[dict, torch.Tensor]:
    """Run one sampler: on CUDA a warm-up run (it captures the graphs), then up to ``reps`` timed runs
    (fewer when a run is long, see :data:`REP_TARGET_S`); on CPU one timed run per rep.
    Denoisers evaluated on the CPU (``on_device`` false: the HMM oracle) are not graph-captured."""
    graphs = graphs and getattr(den, "on_device", True)
    fn = GraphedDenoiser(den, cfg.length, max_rows, den.mask_id, device) if graphs else den
    probe = Probe(fn)
    sampler = make_sampler(probe)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)

    def timed():
        _sync(device)
        t0 = time.perf_counter()
        res = sampler.sample(x, 0)
        _sync(device)
        return time.perf_counter() - t0, res

    with torch.no_grad():
        if device.type == "cuda":
            warm, _ = timed()
            reps = max(1, min(reps, int(REP_TARGET_S / warm)))
        runs = [timed() for _ in range(reps)]
    times, result = [t for t, _ in runs], runs[-1][1]
    out = {
        "time_s": statistics.median(times),
        "times_s": times,
        "rounds": result.rounds,
        "nfe": result.nfe,
        "iterations": result.iterations,
        "logits_peak_mb": probe.max_rows * cfg.length * den.vocab_size * _logits_bytes(cfg) / 2**20,
        "backend": ops.last_backend("sweep"),
        "graphs": (fn.error or True) if graphs else False,
    }
    if device.type == "cuda":
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    residuals = None
    if result.residuals:  # [W] per iteration, summed over the batch; the tail's windows are shorter
        width = max(r.numel() for r in result.residuals)
        residuals = torch.stack([torch.nn.functional.pad(r, (0, width - r.numel())) for r in result.residuals])
    if residuals is not None and residuals.shape[1] > 1:
        out["residual_total"] = residuals.sum(1).tolist()
        if cfg.batch == 1:
            out["residual_matrix"] = residuals.tolist()
    return out, result.tokens


def run_config(cfg: Config, dens: _Denoisers, device, reps: int, graphs: bool, max_logits_gb: float, deadline: float, emit):
    """The baseline and every window of ``cfg``; calls ``emit(row)`` per run and returns nothing."""
    den, mask_id, V = dens.build(cfg)
    x = torch.full((cfg.batch, cfg.length), mask_id, dtype=torch.int64, device=device)
    kw = dict(mask_id=mask_id, num_steps=cfg.steps, grid=cfg.grid, vocab_size=V)
    base = {**asdict(cfg), "windows": None, "device": str(device)}
    seq, seq_tokens = _measure(lambda d: TauLeapingSampler(d, **kw), den, cfg, x, cfg.batch, reps, graphs, device)
    emit({**base, "sampler": "sequential", "window": 1, **seq, "identical": True, "agreement": 1.0, "speedup": 1.0})
    for W in cfg.windows:
        need_gb = W * cfg.batch * cfg.length * V * _logits_bytes(cfg) / 2**30
        if need_gb > max_logits_gb:
            emit({**base, "sampler": "pit", "window": W, "skipped": f"logits would take {need_gb:.1f} GiB > {max_logits_gb} GiB"})
            continue
        if time.time() > deadline:
            emit({**base, "sampler": "pit", "window": W, "skipped": "time budget"})
            continue
        pit, tokens = _measure(
            lambda d, W=W: PITSampler(d, window=W, **kw), den, cfg, x, W * cfg.batch, reps, graphs, device
        )
        emit(
            {
                **base,
                "sampler": "pit",
                "window": W,
                **pit,
                "identical": bool(torch.equal(tokens, seq_tokens)),
                "agreement": float((tokens == seq_tokens).float().mean()),
                "speedup": seq["time_s"] / pit["time_s"],
                "rounds_ratio": seq["rounds"] / pit["rounds"],
                "nfe_ratio": pit["nfe"] / seq["nfe"],
            }
        )


def cpu_name() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def save_result(result: dict, out: str, markdown, started: float) -> dict:
    """Stamp ``result`` with the CPU, date, torch version, threads and the seconds since ``started``,
    and write ``<out>.json`` and ``<out>.md`` (``markdown(result)``)."""
    result["environment"] = {"cpu": cpu_name(), "date": datetime.date.today().isoformat(), "torch": torch.__version__,
                             "threads": torch.get_num_threads()}
    result["seconds"] = round(time.time() - started, 1)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    path.with_suffix(".md").write_text(markdown(result) + "\n")
    print(f"wrote {path.with_suffix('.json')} and {path.with_suffix('.md')} ({result['seconds']:.0f} s)")
    return result


def environment(device: torch.device) -> dict:
    """Versions, device and machine facts recorded with every result."""
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "pit_sampler": pit_sampler.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "sweep_backend": ops.backend_for(device),
        "backends": ops.available_backends(device),
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if device.type == "cuda":
        env["reduced_precision_reduction"] = torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
    if hasattr(os, "getloadavg"):
        env["loadavg_start"] = os.getloadavg()
    return env


def run(out: str | Path, preset: str = "cpu", device: str | None = None, budget_s: float = 600.0, threads: int | None = None,
        graphs: bool | None = None, only: str | None = None) -> dict:
    """Run a preset and write ``<out>.json`` (after every run) and ``<out>.md``; returns the result dict.

    ``only``: run just the configurations whose name contains this string. ``graphs``: CUDA graphs for
    the denoiser (default: on CUDA).
    """
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if threads:
        torch.set_num_threads(threads)
    graphs = device.type == "cuda" if graphs is None else graphs
    if device.type == "cuda":
        # no split-K reductions in reduced precision: fewer row-count-dependent roundings in the matmuls,
        # so a row's logits depend less on the batch it is in (exactness); applies to both samplers
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
        torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    spec = PRESETS[preset]
    configs = [c for c in spec["configs"] if only is None or only in c.name]
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    deadline = start + budget_s
    result = {"preset": preset, "env": environment(device), "graphs": graphs, "budget_s": budget_s,
              "rows": [], "errors": [], "invariance": {}}
    dens = _Denoisers(device)

    def save():
        result["invariance"] = dens.invariance
        result["elapsed_s"] = time.time() - start
        _file(out, ".json").write_text(json.dumps(result, indent=1))

    def emit(row):
        result["rows"].append(row)
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                 if k in ("sampler", "window", "time_s", "rounds", "nfe", "speedup", "identical", "skipped")}
        print(f"[e2e {time.time() - start:6.1f}s] {row['setting']}/{row['model']} L{row['length']} B{row['batch']} "
              f"N{row['steps']} {row['grid']} {row['dtype']}: {shown}", flush=True)
        save()

    for cfg in configs:
        if time.time() > deadline:
            emit({**asdict(cfg), "windows": None, "sampler": "sequential", "window": 1, "skipped": "time budget"})
            continue
        try:
            run_config(cfg, dens, device, spec["reps"], graphs, spec["max_logits_gb"], deadline, emit)
        except Exception as exc:  # noqa: BLE001 -- one failing config must not lose the others
            result["errors"].append({"config": cfg.name, "error": f"{type(exc).__name__}: {exc}"})
            print(f"[e2e] {cfg.name} failed: {type(exc).__name__}: {exc}", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if hasattr(os, "getloadavg"):
        result["env"]["loadavg_end"] = os.getloadavg()
    save()
    _file(out, ".md").write_text(markdown(result))
    return result


def _fmt(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def _identical(r: dict) -> str:
    return "yes" if r["identical"] else f"no ({r['agreement']:.4f} agree)"


def headline(rows: list[dict]) -> list[dict]:
    """Per configuration, the fastest exact PIT run (or the fastest PIT run if none was identical)."""
    best = {}
    for r in rows:
        if r.get("sampler") != "pit" or "time_s" not in r:
            continue
        key = tuple(r[k] for k in ("setting", "model", "dtype", "length", "batch", "steps", "grid"))
        cur = best.get(key)
        if cur is None or (r["identical"], r["speedup"]) > (cur["identical"], cur["speedup"]):
            best[key] = r
    return list(best.values())


def _seq_row(rows, r):
    keys = ("setting", "model", "dtype", "length", "batch", "steps", "grid")
    return next(s for s in rows if s.get("sampler") == "sequential" and "time_s" in s and all(s[k] == r[k] for k in keys))


def markdown(result: dict) -> str:
    """The result as markdown: environment, the best window per configuration, then every run."""
    env, rows = result["env"], result["rows"]
    timing = ("median of repeated runs after a warm-up, CUDA graphs for the denoiser" if env["device"].startswith("cuda")
              else "one run each on a shared CPU: compare ratios, not absolute times")
    lines = [
        f"# End-to-end: sequential tau-leaping vs PIT ({env['device_name']}, {env['device']})",
        "",
        f"{env['date']}; torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}; sweep backend "
        f"`{env['sweep_backend']}`; {env['threads']} threads; preset `{result['preset']}`; timing: {timing}.",
        "Sequential = `TauLeapingSampler` with skip-inactive; PIT = `PITSampler` exact mode (tol=0), same seed. "
        "speedup = sequential wall time / PIT wall time; rounds = sequential denoiser calls; nfe = rows evaluated per sample.",
        "",
        "## Best window per configuration",
        "",
        "| setting | model | dtype | L | B | N | grid | W | seq time s | PIT time s | speedup | rounds seq→PIT | nfe seq→PIT | identical |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in headline(rows):
        s = _seq_row(rows, r)
        lines.append(
            f"| {r['setting']} | {r['model']} | {r['dtype']} | {r['length']} | {r['batch']} | {r['steps']} | {r['grid']} | "
            f"{r['window']} | {s['time_s']:.3f} | {r['time_s']:.3f} | **{r['speedup']:.2f}x** | {s['rounds']}→{r['rounds']} | "
            f"{s['nfe']:.0f}→{r['nfe']:.0f} | {_identical(r)} |"
        )
    lines += [
        "",
        "## Every run",
        "",
        "| config | sampler | W | time s | speedup | rounds | nfe | logits peak MiB | CUDA peak MiB | identical | note |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cfg = f"{r['setting']}/{r['model']}/{r['dtype']} L{r['length']} B{r['batch']} N{r['steps']} {r['grid']}"
        if "skipped" in r:
            lines.append(f"| {cfg} | {r['sampler']} | {r['window']} | - | - | - | - | - | - | - | skipped: {r['skipped']} |")
            continue
        graphs = r.get("graphs")
        note = f"graphs failed: {graphs}" if isinstance(graphs, str) else ""
        lines.append(
            f"| {cfg} | {r['sampler']} | {r['window']} | {r['time_s']:.3f} | {r['speedup']:.2f} | {r['rounds']} | {r['nfe']:.1f} | "
            f"{r['logits_peak_mb']:.1f} | {_fmt(r.get('cuda_peak_mb'), '.0f')} | {_identical(r)} | {note} |"
        )
    lines += ["", "## Batch invariance of the denoisers (rows evaluated alone vs in a batch of 8)", "",
              "| denoiser | bitwise | max abs diff | argmax agreement |", "|---|---|---|---|"]
    for k, v in result["invariance"].items():
        lines.append(f"| {k} | {v['bitwise']} | {v['max_abs_diff']:.3g} | {v['argmax_agreement']:.4f} |")
    if result["errors"]:
        lines += ["", "## Errors", ""] + [f"- `{e['config']}`: {e['error']}" for e in result["errors"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="cpu", choices=sorted(PRESETS))
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    p.add_argument("--out", required=True, help="output prefix: writes <out>.json, <out>.md, <out>-*.png")
    p.add_argument("--budget", type=float, default=600.0, help="seconds after which remaining runs are skipped")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-graphs", action="store_true", help="call the denoiser eagerly on CUDA")
    p.add_argument("--only", default=None, help="run only configs whose name contains this string")
    p.add_argument("--no-plots", action="store_true")
    a = p.parse_args(argv)
    result = run(a.out, a.preset, a.device, a.budget, a.threads, False if a.no_graphs else None, a.only)
    if not a.no_plots:
        from .plot import plot_all

        for path in plot_all(result, a.out):
            print(f"[e2e] wrote {path}")
    print(_file(a.out, ".md").read_text())


if __name__ == "__main__":
    main()
