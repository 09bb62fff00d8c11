"""Benchmark of MaskGITSampler: rounds, nfe and wall time of exact Picard against the sequential sampler.

For each model (``mixture`` and ``hmm`` oracles with ``L = 256``, the shipped ``digits`` transformer
with ``L = 64``), each order and each window, it samples ``B`` sequences from an all-masked start with
one position per step (``num_steps = L``, linear schedule), the same seed for every window, and
records ``rounds`` (sequential denoiser calls), ``nfe`` (rows per sample), CPU wall time (one run) and
whether the tokens equal the sequential sampler's (``window = 1``). One untimed warm-up run per model.

    python -m bench.maskgit --out bench/results/maskgit-cpu-2026-12-01

writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pit_sampler import MaskGITSampler
from pit_sampler.maskgit_reference import ORDERS
from pit_sampler.models import load_pretrained
from pit_sampler.testing import make_oracle

from .e2e import environment
from .models import OracleDenoiser

WINDOWS = (1, 4, 16, 64)


def models() -> dict:
    """``name -> (denoiser, mask_id, L)``."""
    digits = load_pretrained("digits")
    return {
        "mixture": (OracleDenoiser(make_oracle("mixture", length=256, num_tokens=16)), 16, 256),
        "hmm": (OracleDenoiser(make_oracle("hmm", length=256, num_tokens=16)), 16, 256),
        "digits": (lambda x, t: digits(x, t), digits.mask_id, 64),
    }


def run(batch: int = 1, seed: int = 0) -> list[dict]:
    rows = []
    for name, (den, mask_id, L) in models().items():
        x = torch.full((batch, L), mask_id)
        MaskGITSampler(den, mask_id=mask_id, num_steps=L, window=4).sample(x, seed=seed)  # warm-up, untimed
        for order in ORDERS:
            base = base_wall = None
            for window in WINDOWS:
                sampler = MaskGITSampler(den, mask_id=mask_id, num_steps=L, order=order, window=window)
                start = time.perf_counter()
                out = sampler.sample(x, seed=seed)
                wall = time.perf_counter() - start
                base, base_wall = (out, wall) if window == 1 else (base, base_wall)
                row = dict(model=name, L=L, B=batch, order=order, window=window, rounds=out.rounds, nfe=out.nfe,
                           wall_s=round(wall, 3), identical=bool(torch.equal(out.tokens, base.tokens)))
                row["round_speedup"] = round(base.rounds / out.rounds, 2)
                row["wall_speedup"] = round(base_wall / wall, 2)
                rows.append(row)
                print(row, flush=True)
    return rows


def markdown(result: dict) -> str:
    env = result["environment"]
    lines = [
        f"# MaskGITSampler, exact Picard vs sequential ({env['device_name']}, {env['date'][:10]})",
        "",
        f"torch {env['torch']}, {env['threads']} thread(s), op backend `{env['sweep_backend']}`; one run each "
        "(CPU wall time; read the ratios). One position per step (`num_steps = L`), linear schedule, "
        f"B = {result['rows'][0]['B']}, seed 0. `identical`: tokens equal the sequential (W = 1) sample.",
        "",
        "| model | L | order | W | rounds | nfe | rounds seq / PIT | wall s | wall speedup | identical |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['L']} | {r['order']} | {r['window']} | {r['rounds']} | {r['nfe']:.0f} | "
                     f"{r['round_speedup']:.1f}x | {r['wall_s']:.2f} | {r['wall_speedup']:.2f}x | {r['identical']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/maskgit-cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    env = environment(torch.device("cpu"))
    result = {"environment": env, "rows": run(args.batch)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result))


if __name__ == "__main__":
    main()
