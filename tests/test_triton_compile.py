"""Static GPU checks of the Triton sweep kernels, on a machine without a GPU.

Every kernel specialization the host can launch on a GPU (:func:`triton_kernels.sweep.kernel_configurations`,
built from :func:`~triton_kernels.sweep.launch_params`, the function the launcher itself calls: each rule,
mean and score kernel, every ``W_PAD`` up to 128, both sides of the score kernel's widening, ``ALIGNED``,
``ARGMAX_FINAL``, ``SCALE``, ``GREEDY``, ``WITH_COUNTS``), crossed with the fp32/bf16/fp16 logits and the
targets sm_80 and sm_90, is compiled by Triton's own compiler and bundled ptxas
(``triton.compile(ASTSource(...), target=GPUTarget("cuda", cc, 32))``); its cubin is read with the bundled
``cuobjdump``: registers, stack frame and local memory (``--dump-resource-usage``), and the SASS must hold
no local-memory load or store (``LDL``/``STL``: no register spills).

The full product is about 3,200 compilations of 4 to 15 s each: CI compiles a covering subset instead,
every value of every parameter and every pair of values of two parameters (greedy pairwise covering of
the full product, 28 compilations in two worker processes; see :func:`_pairs`). ``PIT_TRITON_COMPILE_FULL=1`` runs the
full product (every core) and rewrites the register table in ``docs/triton.md``;
``python tests/test_triton_compile.py --table`` rewrites it from the subset.

Compilation runs in child processes without ``TRITON_INTERPRET`` (this test session defines the kernels
for Triton's interpreter). Integer arguments are typed ``i32`` and unspecialized (no divisibility
hints), the common case of the JIT launcher's own typing.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "triton.md"
TARGETS = (80, 90)
DTYPES = ("fp32", "bf16", "fp16")
MULTIPROCESSORS = 132  # any count: the widening threshold only moves, both sides are enumerated
TABLE_BEGIN, TABLE_END = "<!-- compile-table:begin -->", "<!-- compile-table:end -->"
# the types of every kernel argument that is not a constexpr (a new argument fails until listed here)
POINTERS = {"logits_ptr": None, "rate_ptr": "*fp32", "counts_ptr": "*i32", "residual_ptr": "*i32",
            "invalid_ptr": "*i32", "missing_ptr": "*i32"}
INT64_POINTERS = ("rows_ptr", "steps_ptr", "x0_ptr", "prev_ptr", "seeds_ptr", "cdf_ptr", "states_ptr", "keys_ptr",
                  "done_ptr")
SCALARS = {"inv_t": "fp32"}
INTS = ("logits_offset", "stride_m", "stride_v", "B", "L", "V", "W", "P", "N", "KC", "M", "mask_id", "n_ltiles",
        "v_split", "chunk_tiles", "n_vtiles")


def _kernels():
    from pit_sampler.triton_kernels import sweep

    return sweep


def configurations() -> list[dict]:
    """The full product: one item per (kernel specialization, logits dtype, target)."""
    sweep = _kernels()
    items = []
    for launch in sweep.kernel_configurations(sweep.gpu_config(MULTIPROCESSORS)):
        for dtype, target in itertools.product(DTYPES, TARGETS):
            items.append(dict(kernel=launch.kernel.__name__, constexprs=launch.constexprs,
                              num_warps=launch.num_warps, dtype=dtype, target=target))
    return items


def _values(item: dict) -> list[tuple]:
    flat = dict(item["constexprs"], kernel=item["kernel"], num_warps=item["num_warps"], dtype=item["dtype"],
                target=item["target"])
    return sorted(flat.items())


SCAN_ONLY = ("W_PAD", "BLOCK_L")  # shape the mean kernel's jump scan only (BLOCK_L follows W_PAD)


def _pairs(item: dict) -> set:
    """The (parameter, value) pairs an item covers, per kernel (the mean and score kernels are covered
    apart). The scan tile's parameters are paired with the target only: they shape the ``[BLOCK_L,
    W_PAD]`` jump scan, which shares no code with the logits path that the other parameters select."""
    values = _values(item)
    return {(item["kernel"], a, b) for a, b in itertools.combinations(values, 2)
            if not ({a[0], b[0]} & set(SCAN_ONLY)) or {a[0], b[0]} & {"target", "kernel"}}


def pairwise(items: list[dict]) -> list[dict]:
    """A greedy covering subset: for each kernel, every pair of (parameter, value) that occurs together in
    some item occurs together in a chosen one (so every value of every parameter, and every value pair,
    is compiled)."""
    pairs = [_pairs(item) for item in items]
    uncovered = set().union(*pairs)
    chosen = []
    while uncovered:
        best = max(range(len(items)), key=lambda i: len(pairs[i] & uncovered))
        chosen.append(items[best])
        uncovered -= pairs[best]
    return chosen


def _signature(kernel, item: dict) -> dict:
    sig = {}
    for name in kernel.arg_names:
        if name in item["constexprs"]:
            sig[name] = "constexpr"
        elif name in POINTERS:
            sig[name] = POINTERS[name] or f"*{item['dtype']}"
        elif name in INT64_POINTERS:
            sig[name] = "*i64"
        elif name in SCALARS:
            sig[name] = SCALARS[name]
        elif name in INTS:
            sig[name] = "i32"
        else:
            raise KeyError(f"{kernel.__name__}: argument {name!r} has no type here: add it to the tables above")
    return sig


def _tool(name: str) -> str:
    import triton.backends.nvidia

    return str(Path(triton.backends.nvidia.__file__).parent / "bin" / name)


def compile_one(item: dict) -> dict:
    """Compile one item (in a process without TRITON_INTERPRET) and read its cubin."""
    import triton
    from triton.backends.compiler import GPUTarget

    sweep = _kernels()
    kernel = getattr(sweep, item["kernel"])
    start = time.time()
    src = triton.compiler.ASTSource(fn=kernel, signature=_signature(kernel, item), constexprs=item["constexprs"])
    options = sweep.Launch(kernel, item["constexprs"], item["num_warps"]).options()  # the launcher's own
    compiled = triton.compile(src, target=GPUTarget("cuda", item["target"], 32), options=options)
    seconds = time.time() - start
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run([_tool("cuobjdump"), "--dump-resource-usage", str(cubin)], check=True,
                               capture_output=True, text=True).stdout
        sass = subprocess.run([_tool("cuobjdump"), "-sass", str(cubin)], check=True, capture_output=True,
                              text=True).stdout
    fields = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", usage))
    return dict(item, regs=int(fields["REG"]), stack=int(fields["STACK"]), local=int(fields["LOCAL"]),
                shared=int(fields["SHARED"]), local_ops=len(re.findall(r"\b(?:LDL|STL)(?:\.\w+)*\s", sass)),
                seconds=round(seconds, 2))


def _worker() -> None:
    """``--worker``: compile the JSON list of items on stdin, print one JSON result per line."""
    for item in json.load(sys.stdin):
        print(json.dumps(compile_one(item)), flush=True)


def compile_all(items: list[dict], workers: int) -> list[dict]:
    """Compile ``items`` in ``workers`` child processes (round robin), results in item order."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    shares = [items[i::workers] for i in range(workers)]

    def run(share):
        out = subprocess.run([sys.executable, __file__, "--worker"], input=json.dumps(share), env=env, cwd=ROOT,
                             capture_output=True, text=True, check=False)
        assert out.returncode == 0, out.stderr[-4000:]
        return [json.loads(line) for line in out.stdout.splitlines()]

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(run, [s for s in shares if s]))
    by_key = {json.dumps(_values(r)): r for r in itertools.chain(*results)}
    return [by_key[json.dumps(_values(item))] for item in items]


def _label(item: dict) -> str:
    c = item["constexprs"]
    flags = [name for name in ("ALIGNED", "ARGMAX_FINAL", "SCALE", "GREEDY", "WITH_COUNTS") if c[name]]
    shape = f"W_PAD={c['W_PAD']} BLOCK_L={c['BLOCK_L']}" if "W_PAD" in c else f"BLOCK_L={c['BLOCK_L']}"
    return (f"| `{item['kernel']}` | sm_{item['target']} | {item['dtype']} | {c['RULE']} | {shape} | "
            f"{c['GROUPS']} | {item['num_warps']} | {' '.join(flags) or '-'} |")


def write_table(results: list[dict], what: str, seconds: float) -> None:
    """Rewrite the register table of docs/triton.md (between the compile-table markers)."""
    regs = [r["regs"] for r in results]
    lines = [
        TABLE_BEGIN,
        f"{what}: {len(results)} compilations in {seconds:.0f} s ({os.cpu_count()} cores; triton "
        f"{_triton_version()}); registers {min(regs)} to {max(regs)} per thread, no local memory, no LDL/STL.",
        "",
        "| kernel | target | logits | RULE | block | GROUPS | warps | flags | regs | stack (B) | compile (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(results, key=lambda r: (r["kernel"], r["target"], r["dtype"], json.dumps(_values(r)))):
        lines.append(f"{_label(r)} {r['regs']} | {r['stack']} | {r['seconds']:.1f} |")
    lines.append(TABLE_END)
    text = DOC.read_text()
    head, rest = text.split(TABLE_BEGIN)
    DOC.write_text(head + "\n".join(lines) + rest.split(TABLE_END, 1)[1])


def _triton_version() -> str:
    import triton

    return triton.__version__


def _assert_clean(results: list[dict]) -> None:
    for r in results:
        assert r["local"] == 0 and r["local_ops"] == 0, f"local memory (spills) in {_label(r)}: {r}"
        assert r["regs"] <= 255, r


def _toolchain() -> str | None:
    try:
        import triton  # noqa: F401
        import triton.backends.nvidia  # noqa: F401
    except ImportError as err:
        return f"Triton's NVIDIA backend is not importable ({err})"
    for tool in ("ptxas", "cuobjdump"):
        if not os.access(_tool(tool), os.X_OK):
            return f"Triton's bundled {tool} is missing"
    return None


needs_toolchain = pytest.mark.skipif(_toolchain() is not None, reason=str(_toolchain()))


@needs_toolchain
def test_configurations_come_from_the_launcher():
    """The product covers every parameter value the host produces; the subset covers every value pair."""
    items = configurations()
    subset = pairwise(items)
    values = {}
    for item in items:
        for name, value in _values(item):
            values.setdefault(name, set()).add(value)
    assert values["W_PAD"] == {2, 4, 8, 16, 32, 64, 128}
    assert values["kernel"] == {"_mean_kernel", "_score_kernel"} and values["num_warps"] == {1, 4}
    assert values["dtype"] == set(DTYPES) and values["target"] == set(TARGETS)
    assert {i["constexprs"]["RULE"] for i in items} == {0, 1, 2}
    for flag in ("ALIGNED", "ARGMAX_FINAL", "SCALE", "GREEDY", "WITH_COUNTS"):
        assert {i["constexprs"][flag] for i in items} == {False, True}
    assert set().union(*map(_pairs, items)) == set().union(*map(_pairs, subset))
    assert len(subset) <= 32  # the CI budget: about 2 minutes on 2 cores


@needs_toolchain
def test_covering_subset_compiles_without_spills():
    """sm_80 and sm_90, the pairwise covering subset: compiles, no local memory (CI: about 2 minutes)."""
    _assert_clean(compile_all(pairwise(configurations()), workers=2))


@pytest.mark.extended
@needs_toolchain
@pytest.mark.skipif(os.environ.get("PIT_TRITON_COMPILE_FULL") != "1", reason="set PIT_TRITON_COMPILE_FULL=1")
def test_full_product_compiles_without_spills():
    """Every configuration (hours on 2 cores, minutes on many): compiles, no spills; rewrites the table."""
    start = time.time()
    results = compile_all(configurations(), workers=os.cpu_count() or 1)
    write_table(results, "Full product", time.time() - start)
    _assert_clean(results)


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        _worker()
    elif sys.argv[1:] in (["--table"], ["--table", "--full"]):
        full = "--full" in sys.argv
        t0 = time.time()
        chosen = configurations() if full else pairwise(configurations())
        out = compile_all(chosen, workers=os.cpu_count() or 1)
        write_table(out, "Full product" if full else "Pairwise covering subset (the CI test's)", time.time() - t0)
        _assert_clean(out)
    else:
        sys.exit("usage: test_triton_compile.py --worker | --table [--full]")
