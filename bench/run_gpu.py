"""Everything that needs a GPU, in one command and one time budget: ``bash bench/run_gpu.sh``.

Sections, in order, each in its own subprocess with a timeout (a crash, a hang or a CUDA error in one
section is recorded in ``results.json`` and the next section runs):

1. ``env``: device, driver, torch/triton/CUDA versions, date, git commit, available backends, and the
   two ceilings measured once (device-to-device copy bandwidth, counting bytes read plus written;
   bf16 matrix-product rate), with ``triton.testing.do_bench`` medians.
2. ``install``: the outcome of ``pip install --no-deps --no-build-isolation -e .`` (run by the shell
   script, which builds the native extension).
3. ``tests``: the device-dependent test files (``test_ops``, ``test_native``, ``test_triton_kernels``,
   which run on CUDA when there is one) and every ``gpu``-marked test, slow ones included; the rest of
   the suite does not depend on the device and runs in CI.
4. ``kernels``: ``bench.kernels_gpu.run(out_dir, budget_s, device)`` (the kernels' own check and timing).
5. ``micro``: the op microbenchmarks, ``pytest bench/test_bench_ops.py --benchmark-only --bench-preset gpu``.
6. ``gpu_scale``: :mod:`bench.gpu_scale` (positions protocol against full logits at L = 1024,
   V = 50257; ``window="auto"``; ``cuda_graph=True``).
   Then ``distributed``: :mod:`bench.distributed` under ``torchrun`` over every GPU when there are
   two or more (skipped, with a message, on one GPU).
7. ``e2e``: :mod:`bench.e2e` with the ``gpu`` preset, given what is left of the budget.
8. plots (:mod:`bench.plot`) and the report: ``results.json`` and ``results.md`` in
   ``bench/results/<date>-<device>/``, with the targets of issue 5 checked (met, or missed by how much).

If ``$OUT`` is set (the device machine), ``results.tar.gz`` (the whole results folder) and
``results.md`` are copied there. ``--device cpu --preset tiny`` runs the same logic on a CPU in about
a minute (a dry run: tests are only collected).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Per preset: the e2e preset, the section time caps (seconds) and the pytest arguments.
PRESETS = {
    "gpu": dict(
        e2e="gpu",
        caps=dict(env=45, tests=90, kernels=45, micro=45, gpu_scale=60, distributed=40),
        tests=["tests", "-m", "not slow or gpu", "-k",
               "test_ops or test_native or test_triton_kernels or test_rounds or test_compile or test_cuda_graph or gpu"],
        micro=["--bench-preset", "gpu"],
        gpu_scale=["--batches", "1", "4", "16"],
    ),
    "tiny": dict(
        e2e="tiny",
        caps=dict(env=60, tests=60, kernels=30, micro=60, gpu_scale=60, distributed=60),
        tests=["tests", "-m", "not slow", "--collect-only"],
        gpu_scale=["--batches", "1", "--full-max-gib", "0"],
        micro=["--bench-preset", "small", "-k", "steady and W1 and B1 and float32"],
    ),
}
REPORT_RESERVE_S = 20  # kept back for plots and the report
TARGETS = dict(gpt2_speedup=2.0, synthetic_speedup=10.0, sweep_copy_share=0.85)


def _run(cmd: list[str], log: Path, timeout: float, env: dict | None = None) -> dict:
    """Run ``cmd`` in its own process group with output to ``log``; kill the group at ``timeout``."""
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        try:
            rc = proc.wait(timeout=max(1.0, timeout))
            status = "ok" if rc == 0 else "error"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            rc, status = None, "timeout"
    tail = log.read_text(errors="replace")[-3000:]
    return {"status": status, "returncode": rc, "seconds": round(time.time() - t0, 1), "timeout_s": round(timeout),
            "log": log.name, "tail": tail}


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


ENV_CODE = r"""
import datetime, json, os, platform, subprocess, sys, torch
from pit_sampler import ops
dev = torch.device(sys.argv[1])
info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(dev), "torch": torch.__version__, "cuda": torch.version.cuda,
        "python": platform.python_version(), "cpu_count": os.cpu_count(),
        "backends": ops.available_backends(dev), "sweep_backend": ops.backend_for(dev)}
try:
    import triton
    info["triton"] = triton.__version__
except ImportError:
    info["triton"] = None
if dev.type == "cuda":
    p = torch.cuda.get_device_properties(dev)
    info.update(device_name=p.name, sm_count=p.multi_processor_count, memory_gib=round(p.total_memory / 2**30, 1))
    try:
        q = "driver_version,clocks.sm,clocks.max.sm,clocks.mem,power.draw,temperature.gpu"
        out = subprocess.run(["nvidia-smi", f"--query-gpu={q}", "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
        info["nvidia_smi"] = dict(zip(q.split(","), [v.strip() for v in out.stdout.strip().split(",")]))
        info["driver"] = info["nvidia_smi"].get("driver_version")
    except Exception as exc:
        info["driver"] = f"unknown ({exc})"
    from triton.testing import do_bench
    src = torch.empty(2**28, dtype=torch.float32, device=dev).normal_()  # 1 GiB
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=50, rep=300, return_mode="median")
    info["copy_gbps"] = 2 * src.numel() * 4 / (ms * 1e-3) / 1e9
    n = 8192
    a, b = (torch.randn(n, n, device=dev, dtype=torch.bfloat16) for _ in range(2))
    ms = do_bench(lambda: a @ b, warmup=50, rep=300, return_mode="median")
    info["bf16_matmul_tflops"] = 2 * n**3 / (ms * 1e-3) / 1e12
else:
    from bench.e2e import cpu_name
    info["device_name"] = cpu_name()
print("ENV_JSON=" + json.dumps(info))
"""

KERNELS_CODE = r"""
import json, sys
from bench import kernels_gpu
out = kernels_gpu.run(sys.argv[1], float(sys.argv[2]), sys.argv[3])
print("KERNELS_JSON=" + json.dumps(out, default=str))
"""


def _tagged_json(tail_log: Path, tag: str):
    for line in reversed(tail_log.read_text(errors="replace").splitlines()):
        if line.startswith(tag):
            return json.loads(line[len(tag):])
    return None


def _git() -> dict:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        if sha.returncode == 0:
            return {"commit": sha.stdout.strip(), "dirty_files": len(dirty.stdout.splitlines())}
    except (OSError, subprocess.SubprocessError):
        pass
    return {"commit": os.environ.get("PIT_GIT_COMMIT", "unknown"), "dirty_files": None}


def torch_gpu_count() -> int:
    """CUDA devices visible here (asked in a subprocess: this script does not import torch)."""
    try:
        out = subprocess.run(_python("import torch; print(torch.cuda.device_count())"), capture_output=True,
                             text=True, timeout=60)
        return int(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return 0


def _slug(name: str) -> str:
    m = re.search(r"\b([a-z]\d{2,4}[a-z]?)\b", name.lower())
    return m.group(1) if m else re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:24] or "device"


def _results_dir(base: Path, device_name: str) -> Path:
    stem = f"{datetime.date.today().isoformat()}-{_slug(device_name)}"
    path, i = base / stem, 2
    while path.exists():
        path, i = base / f"{stem}-{i}", i + 1
    path.mkdir(parents=True)
    return path


def _junit(path: Path) -> dict:
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    failed = [f"{c.get('classname')}::{c.get('name')}" for c in suite.iter("testcase")
              if c.find("failure") is not None or c.find("error") is not None]
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "failed": failed[:30]}


def micro_rows(path: Path, copy_gbps: float | None) -> list[dict]:
    """pytest-benchmark JSON -> one row per benchmark with median, GB/s and share of copy bandwidth."""
    rows = []
    for b in json.loads(path.read_text())["benchmarks"]:
        info, median = b["extra_info"], b["stats"]["median"]
        row = {k: v for k, v in info.items() if k != "device"}
        row.update(median_us=median * 1e6, gbps=info["bytes"] / median / 1e9)
        if copy_gbps:
            row["copy_share"] = row["gbps"] / copy_gbps
        rows.append(row)
    return rows


def _fill_shares(micro: list[dict] | None, kernels: dict | None) -> list[tuple[float, str]]:
    """``(share of copy bandwidth, description)`` of every non-reference fill-case sweep timing, from the
    microbenchmarks and from ``kernels_gpu`` (which measures its own copy bandwidth)."""
    out = [(r["copy_share"], f"micro {r['backend']} W{r['W']} B{r['B']} L{r['L']} V{r['V']} {r['dtype']}: {r['gbps']:.0f} GB/s")
           for r in micro or [] if r.get("op") == "sweep" and r.get("case") == "fill" and "copy_share" in r
           and r.get("backend") != "reference"]
    for case in (kernels or {}).get("cases", []):
        if case.get("kind") == "fill":
            for name, b in case.get("backends", {}).items():
                if "copy_share" in b:
                    out.append((b["copy_share"], f"kernels_gpu {name} {case['name']}: {b.get('gbps', 0):.0f} GB/s"))
    return out


def check_targets(e2e: dict | None, micro: list[dict] | None, kernels: dict | None = None) -> list[dict]:
    """The issue's targets against this run's numbers: value, target, met, and the gap when missed."""
    out = []

    def add(name, value, target, how):
        met = value is not None and value >= target
        gap = None if value is None or met else f"missed by {target / value:.2f}x ({value:.2f} vs {target:.2f})"
        out.append({"target": name, "value": value, "goal": target, "met": met, "gap": gap, "how": how})

    runs = [r for r in (e2e or {}).get("rows", []) if r.get("sampler") == "pit" and "time_s" in r]
    gpt2_all = [r for r in runs if r["model"] == "gpt2-small" and r["batch"] <= 4]
    gpt2 = [r for r in gpt2_all if r["identical"]]
    per_cfg = {}
    for r in gpt2:
        key = (r["length"], r["batch"], r["steps"], r["grid"], r["dtype"])
        per_cfg[key] = max(per_cfg.get(key, 0.0), r["speedup"])
    add("PIT >= 2x sequential, GPT-2-small, B 1-4, identical tokens (worst configuration's best window)",
        min(per_cfg.values()) if per_cfg else None, TARGETS["gpt2_speedup"],
        f"{len(per_cfg)} configurations with identical tokens; best overall "
        f"{max(per_cfg.values()):.2f}x" if per_cfg else
        f"{len(gpt2_all)} GPT-2-small PIT runs at B <= 4, none with identical tokens "
        f"(best agreement {max((r['agreement'] for r in gpt2_all), default=0):.4f})")
    synth = [r["speedup"] for r in runs if r["setting"] == "synthetic" and r["identical"]]
    add("PIT >= 10x sequential, synthetic setting, identical tokens (best run)",
        max(synth) if synth else None, TARGETS["synthetic_speedup"], f"{len(synth)} identical synthetic runs")
    best = max(_fill_shares(micro, kernels), default=None)
    add("fused sweep >= 85% of copy bandwidth (best fill case)", best[0] if best else None,
        TARGETS["sweep_copy_share"], best[1] if best else "no fill-case sweep timing with a measured copy bandwidth")
    return out


def markdown(report: dict, e2e_md: str | None) -> str:
    """results.md: environment, sections, targets, then the e2e and microbenchmark tables."""
    env, s = report["env"], report["sections"]
    lines = [
        f"# pit-sampler GPU results: {env.get('device_name', '?')}",
        "",
        f"- date {env.get('date')}; commit `{report['git']['commit']}` (dirty files: {report['git']['dirty_files']})",
        f"- torch {env.get('torch')}, CUDA {env.get('cuda')}, triton {env.get('triton')}, driver {env.get('driver')}, "
        f"python {env.get('python')}",
        f"- backends {env.get('backends')}; copy bandwidth {_f(env.get('copy_gbps'), '.0f')} GB/s (read + write); "
        f"bf16 matmul {_f(env.get('bf16_matmul_tflops'), '.0f')} TFLOP/s",
        f"- total {report['elapsed_s']:.0f} s of a {report['budget_s']:.0f} s budget",
        "",
        "## Sections",
        "",
        "| section | status | seconds | note |",
        "|---|---|---|---|",
    ]
    for name, sec in s.items():
        note = sec.get("summary") or sec.get("error") or ""
        if sec["status"] in ("error", "timeout") and sec.get("tail"):
            note += " / last line: " + sec["tail"].strip().splitlines()[-1]
        lines.append(f"| {name} | {sec['status']} | {sec.get('seconds', '-')} | {note[:200].replace('|', '/')} |")
    lines += ["", "## Targets (issue 5)", "", "| target | value | goal | met | note |", "|---|---|---|---|---|"]
    for t in report["targets"]:
        lines.append(f"| {t['target']} | {_f(t['value'])} | {t['goal']} | {'yes' if t['met'] else 'no'} | "
                     f"{t['gap'] or ''} {t['how']} |")
    kernels = s.get("kernels", {}).get("result") or {}
    if kernels.get("summary"):
        lines += ["", "## Kernels (bench/kernels_gpu.py)", ""] + [f"- {line}" for line in kernels["summary"]]
    if e2e_md:
        lines += ["", e2e_md.split("\n", 1)[1].replace("\n## ", "\n### ")]
    micro = report.get("micro_rows")
    if micro:
        lines += ["", "## Microbenchmarks (median of pytest-benchmark rounds, device synchronised per call)", "",
                  "| op | case | W | B | L | V/N | dtype | backend | median us | GB/s | share of copy BW |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in micro:
            lines.append(f"| {r['op']} | {r.get('case', '-')} | {r.get('W', '-')} | {r['B']} | {r['L']} | "
                         f"{r.get('V', r.get('N'))} | {r.get('dtype', '-')} | {r['backend']} | {r['median_us']:.1f} | "
                         f"{r['gbps']:.1f} | {_f(r.get('copy_share'), '.1%')} |")
    return "\n".join(lines) + "\n"


def _f(v, spec=".2f"):
    return "-" if v is None else format(v, spec)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Run every GPU check and benchmark under one time budget.")
    p.add_argument("--device", default="cuda")
    p.add_argument("--preset", default="gpu", choices=sorted(PRESETS))
    p.add_argument("--budget", type=float, default=330.0, help="seconds for everything, from --start")
    p.add_argument("--start", type=float, default=None, help="epoch seconds the budget counts from (default: now)")
    p.add_argument("--install-log", default=None, help="the log of the install step, copied into the results")
    p.add_argument("--install-rc", default=None, help="the install step's exit code")
    p.add_argument("--out-dir", default=str(ROOT / "bench" / "results"), help="parent of the results folder")
    a = p.parse_args(argv)
    start = a.start or time.time()
    deadline = start + a.budget
    preset = PRESETS[a.preset]
    py = sys.executable

    def left(cap: float) -> float:
        return min(cap, deadline - REPORT_RESERVE_S - time.time())

    sections: dict[str, dict] = {}
    # 1. environment, in a scratch folder until the device name gives the results folder its name
    scratch = Path(a.out_dir) / ".pending"
    scratch.mkdir(parents=True, exist_ok=True)
    sec = _run(_python(ENV_CODE) + [a.device], scratch / "env.log", left(preset["caps"]["env"]))
    env = _tagged_json(scratch / "env.log", "ENV_JSON=") or {}
    sections["env"] = {**sec, "summary": f"{env.get('device_name')} copy {_f(env.get('copy_gbps'), '.0f')} GB/s"}
    out = _results_dir(Path(a.out_dir), env.get("device_name") or a.device)
    for f in scratch.iterdir():
        shutil.move(str(f), out / f.name)
    scratch.rmdir()
    print(f"[run_gpu] results in {out}", flush=True)

    # 2. install (done by the shell script before Python could import the package)
    if a.install_log and Path(a.install_log).exists():
        shutil.copy(a.install_log, out / "install.log")
        rc = int(a.install_rc) if a.install_rc not in (None, "") else None
        sections["install"] = {"status": "ok" if rc == 0 else "error", "returncode": rc, "log": "install.log",
                               "tail": (out / "install.log").read_text(errors="replace")[-2000:]}
    else:
        sections["install"] = {"status": "skipped", "summary": "no install log (PIT_SKIP_INSTALL or run directly)"}

    # 3. tests
    xml = out / "tests.xml"
    sec = _run([py, "-m", "pytest", *preset["tests"], "-q", "-rfE", "-p", "no:cacheprovider", f"--junitxml={xml}"],
               out / "tests.log", left(preset["caps"]["tests"]))
    if "--collect-only" in preset["tests"]:
        sec["summary"] = sec["tail"].strip().splitlines()[-1] if sec["tail"].strip() else ""
    elif xml.exists():
        sec["junit"] = _junit(xml)
        j = sec["junit"]
        sec["summary"] = f"{j['passed']} passed, {j['failures'] + j['errors']} failed, {j['skipped']} skipped"
    sections["tests"] = sec
    print(f"[run_gpu] tests: {sec['status']} {sec.get('summary', '')}", flush=True)

    # 4. the Triton engineer's kernel check and timing
    kdir = out / "kernels"
    kdir.mkdir()
    cap = left(preset["caps"]["kernels"])
    sec = _run(_python(KERNELS_CODE) + [str(kdir), str(max(5.0, cap - 15)), a.device], out / "kernels.log", cap)
    sec["result"] = kernels = _tagged_json(out / "kernels.log", "KERNELS_JSON=")
    if kernels:
        sec["summary"] = kernels.get("error") or f"{len(kernels.get('cases', []))} cases, skipped {kernels.get('skipped')}"
    sections["kernels"] = sec
    print(f"[run_gpu] kernels: {sec['status']}", flush=True)

    # 5. microbenchmarks
    mjson = out / "micro.json"
    sec = _run([py, "-m", "pytest", "bench/test_bench_ops.py", "--benchmark-only", "-q", "-p", "no:cacheprovider",
                f"--bench-device={a.device}", *preset["micro"], f"--benchmark-json={mjson}",
                "--benchmark-columns=median,min,max,rounds"], out / "micro.log", left(preset["caps"]["micro"]))
    micro = micro_rows(mjson, env.get("copy_gbps")) if mjson.exists() else None
    sec["summary"] = f"{len(micro)} benchmarks" if micro else "no benchmark JSON"
    sections["micro"] = sec
    print(f"[run_gpu] micro: {sec['status']} {sec['summary']}", flush=True)

    # 6. GPU-scale rounds: the positions protocol against full logits, window="auto", CUDA graphs
    cap = left(preset["caps"]["gpu_scale"])
    sec = _run([py, "-m", "bench.gpu_scale", "--device", a.device, "--out", str(out / "gpu-scale"), "--variants",
                *preset["gpu_scale"]], out / "gpu_scale.log", cap)
    sections["gpu_scale"] = sec
    print(f"[run_gpu] gpu_scale: {sec['status']}", flush=True)

    # 6b. window parallelism over the GPUs (bench.distributed): needs two or more
    gpus = torch_gpu_count() if a.device == "cuda" else 0
    if gpus >= 2:
        cap = left(preset["caps"]["distributed"])
        sec = _run([py, "-m", "torch.distributed.run", "--nproc-per-node", str(gpus), "-m", "bench.distributed",
                    "--out", str(out), "--reps", "2"], out / "distributed.log", cap)
    else:
        sec = {"status": "skipped", "summary": f"{gpus} GPU(s): window parallelism needs two or more"}
    sections["distributed"] = sec
    print(f"[run_gpu] distributed: {sec['status']} {sec.get('summary', '')}", flush=True)

    # 7. end to end, with the rest of the budget (the e2e script stops starting runs at its own budget)
    budget = deadline - REPORT_RESERVE_S - time.time()
    sec = _run([py, "-m", "bench.e2e", "--preset", preset["e2e"], "--device", a.device, "--out", str(out / "e2e"),
                "--budget", str(max(0.0, budget - 45)), "--no-plots"], out / "e2e.log", budget)
    e2e_path = out / "e2e.json"
    e2e = json.loads(e2e_path.read_text()) if e2e_path.exists() else None
    n_runs = len([r for r in (e2e or {}).get("rows", []) if "time_s" in r])
    sec["summary"] = f"{n_runs} runs" + (f", {len(e2e['errors'])} config errors" if e2e and e2e["errors"] else "")
    sections["e2e"] = sec
    print(f"[run_gpu] e2e: {sec['status']} {sec['summary']}", flush=True)

    # 7. plots and report
    e2e_md = None
    if e2e:
        try:
            from bench.e2e import markdown as e2e_markdown
            from bench.plot import plot_all

            sections["plots"] = {"status": "ok", "files": [p.name for p in plot_all(e2e, out / "e2e")]}
            e2e_md = e2e_markdown(e2e)
        except Exception as exc:  # noqa: BLE001 -- the report must still be written
            sections["plots"] = {"status": "error", "error": f"{type(exc).__name__}: {exc}"}
    report = {"env": env, "git": _git(), "preset": a.preset, "budget_s": a.budget, "sections": sections,
              "micro_rows": micro, "targets": check_targets(e2e, micro, kernels), "elapsed_s": time.time() - start}
    (out / "results.json").write_text(json.dumps(report, indent=1, default=str))
    md = markdown(report, e2e_md)
    (out / "results.md").write_text(md)
    if os.environ.get("OUT"):
        dest = Path(os.environ["OUT"])
        with tarfile.open(dest / "results.tar.gz", "w:gz") as tar:
            tar.add(out, arcname=out.name)
        shutil.copy(out / "results.md", dest / "results.md")
    print(md.split("\n## Microbenchmarks")[0][:9000])
    print(f"[run_gpu] done in {time.time() - start:.0f} s: {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
