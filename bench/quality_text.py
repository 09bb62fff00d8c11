"""Sampler settings on the shipped text model: generative perplexity and unigram entropy of the samples
of sequential tau-leaping per time grid / rule / final step, at a few step counts.

The text model has no exact likelihood, so its samples are scored as in docs/text-model.md: the
shipped GPT-2 evaluator's perplexity (``text.generative_perplexity``; lower is closer to text the
evaluator finds likely) with the mean per-sample unigram entropy (``text.unigram_entropy``; a sampler
that lowers gen-PPL by repeating tokens shows a falling entropy). The masked LM's held-out NELBO is a
property of the model and the forward process, the same for every sampler setting, so it cannot rank
them; it is printed as context. The model runs in float32 (quality only: no exactness needed); the
per-sample negative log-likelihood's standard error gives each gen-PPL's uncertainty
(``exp(mean +- se)``, per token).

    python -m bench.quality_text --out bench/results/quality-text-cpu-2026-12-06     # 12 min, 1 thread
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

from pit_sampler import TauLeapingSampler
from pit_sampler.models import text

from .e2e import save_result

#: name -> sampler settings (the rest at the package defaults)
CONFIGS = {
    "old default (geometric, reject, sample)": dict(grid="geometric", rule="reject", final="sample"),
    "MDLM (uniform, tweedie, argmax)": dict(grid="uniform", rule="tweedie", final="argmax"),
    "uniform, reject, sample": dict(grid="uniform", rule="reject", final="sample"),
    "cosine, reject, sample": dict(grid="cosine", rule="reject", final="sample"),
    "cosine, tweedie, sample": dict(grid="cosine", rule="tweedie", final="sample"),
}
STEPS = (16, 64, 256)


def run(batch: int, length: int, steps=STEPS, configs=CONFIGS, seed: int = 0, log=print) -> dict:
    tok = text.load_tokenizer()
    model = text.load_text_model(dtype=torch.float32)
    evaluator = text.load_evaluator()
    den = text.text_denoiser(model, tok)
    x = torch.full((batch, length), tok.mask_token_id, dtype=torch.int64)
    rows = []
    for N in steps:
        for name, cfg in configs.items():
            start = time.perf_counter()
            result = TauLeapingSampler(den, num_steps=N, **cfg, **den.sampler_kwargs()).sample(x, seed=seed)
            nll = text.sequence_nll(evaluator, result.tokens) / (length - 1)  # per token, per sample
            mean, se = float(nll.mean()), float(nll.std() / math.sqrt(batch))
            rows.append(dict(config=name, **cfg, N=N, rounds=result.rounds, gen_ppl=math.exp(mean),
                             gen_ppl_lo=math.exp(mean - se), gen_ppl_hi=math.exp(mean + se), nll=mean, nll_se=se,
                             entropy=text.unigram_entropy(result.tokens), seconds=round(time.perf_counter() - start, 1)))
            log(json.dumps(rows[-1]))
    held = text.heldout_windows(tok, length)
    nll = text.sequence_nll(evaluator, held) / (length - 1)
    reference = dict(gen_ppl=math.exp(float(nll.mean())), entropy=text.unigram_entropy(held), n=held.shape[0])
    return dict(rows=rows, heldout=reference, batch=batch, length=length, seed=seed)


def markdown(result: dict) -> str:
    env, rows = result["environment"], result["rows"]
    steps = sorted({r["N"] for r in rows})
    names = list(dict.fromkeys(r["config"] for r in rows))
    h = result["heldout"]
    out = [f"# Sampler settings on the text model ({env['cpu']}, {env['date']})", "",
           f"`python -m bench.quality_text`: {result['seconds']:.0f} s, torch {env['torch']}, {env['threads']} thread. "
           f"{result['batch']} samples of {result['length']} tokens per cell (sequential tau-leaping, seed "
           f"{result['seed']}, all-masked start, log-linear schedule, float32 model). Cells: gen-PPL under the "
           "shipped GPT-2 evaluator [range from ± 1 s.e. of the per-token NLL] / mean unigram entropy (nats) / "
           f"rounds. Held-out text ({h['n']} windows): gen-PPL {h['gen_ppl']:.1f}, entropy {h['entropy']:.3f}. "
           "The held-out NELBO (5.654 nats/token) does not depend on the sampler settings.", "",
           "| settings | " + " | ".join(f"N = {N}" for N in steps) + " |", "|---" * (1 + len(steps)) + "|"]
    for name in names:
        cells = []
        for N in steps:
            (r,) = [r for r in rows if r["config"] == name and r["N"] == N]
            cells.append(f"{r['gen_ppl']:.0f} [{r['gen_ppl_lo']:.0f}, {r['gen_ppl_hi']:.0f}] / {r['entropy']:.3f} / {r['rounds']}")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m bench.quality_text", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output prefix (writes .json and .md)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.time()
    result = run(args.batch, args.length, seed=args.seed)
    return save_result(result, args.out, markdown, start)


if __name__ == "__main__":
    main()
