"""The demo behind ``python -m pit_sampler demo``.

It samples from one model with sequential tau-leaping (:class:`~pit_sampler.TauLeapingSampler`)
and with parallel-in-time Picard iterations (:class:`~pit_sampler.PITSampler`) from the same seed,
and prints the sequential rounds, the denoiser rows per sample (nfe), the wall time (each sampler's fastest of two interleaved runs), and whether the
two samplers produced identical tokens.

* ``digits`` / ``digits-time``: the shipped masked-diffusion transformer trained on the scikit-learn
  digits (time-agnostic / time-conditioned). Saves a PNG grid (held-out real digits, tau-leaping,
  PIT) and prints classifier confidence, class-histogram entropy and nearest-training-image distance
  for both samplers and the held-out real data (:mod:`pit_sampler.models.digits`).
* ``mixture`` / ``hmm`` / ``independent``: an exact oracle from :mod:`pit_sampler.testing`; also
  prints the mean true log-likelihood (with its standard error) of each sampler's samples next to
  that of exact samples from the oracle (``oracle.sample``).
* ``text``: the shipped masked-diffusion LM on Debian's fortunes (a ``ModernBertForMaskedLM`` through
  :class:`~pit_sampler.adapters.HFMaskedLM`, :mod:`pit_sampler.models.text`); also runs PIT in its
  approximate forms (``tol > 0``, ``mode="fixed"``), prints decoded samples, and scores every set of
  samples and the held-out text with the evaluator's generative perplexity and the unigram entropy.
* ``text-blocks``: the shipped block-causal model (BD3-LM) on the same corpus, block by block, with
  and without its prefix KV cache (:mod:`pit_sampler.models.demo_blocks`).
"""

from __future__ import annotations

import math
import time

import torch

from ..samplers import PITSampler, TauLeapingSampler

DIGIT_MODELS = ("digits", "digits-time")
ORACLE_MODELS = ("mixture", "hmm", "independent")
TEXT_MODELS = ("text", "text-blocks")


def _run_pair(denoiser, x_init, *, mask_id, vocab_size, steps, window, seed, progress, repeats: int = 2) -> dict:
    """Sample ``x_init`` with both samplers from ``seed``, ``repeats`` times each, interleaved (a
    fresh sampler per run: nothing is learned from an earlier run), after an untimed one-row warm-up
    of each; wall time in seconds is each sampler's fastest run, so neither pays for warming up the
    process or for a slow stretch of the machine alone."""
    common = dict(mask_id=mask_id, vocab_size=vocab_size, num_steps=steps)
    makers = {
        "tau-leaping": lambda bar: TauLeapingSampler(denoiser, progress=bar, **common),
        f"PIT (W={window})": lambda bar: PITSampler(denoiser, window=window, progress=bar, **common),
    }
    for make in makers.values():
        make(False).sample(x_init[:1], seed=seed)
    runs = timed_runs({name: lambda make=make: make(progress) for name, make in makers.items()}, x_init, seed, repeats)
    seq, pit = runs.values()
    identical = torch.equal(seq["result"].tokens, pit["result"].tokens)
    return {"runs": runs, "identical": identical, "ratio": seq["result"].rounds / pit["result"].rounds}


def timed_runs(makers: dict, x_init, seed: int, repeats: int = 2) -> dict:
    """Each sampler ``makers[name]()`` run ``repeats`` times on ``x_init``, interleaved, a fresh sampler per
    run: ``{name: {"result": its last result, "seconds": its fastest wall time}}``."""
    runs = {name: {"seconds": math.inf} for name in makers}
    for _ in range(repeats):
        for name, make in makers.items():
            sampler = make()
            start = time.perf_counter()
            result = sampler.sample(x_init, seed=seed)
            runs[name] = {"result": result, "seconds": min(runs[name]["seconds"], time.perf_counter() - start)}
    return runs


def _describe_windows(result) -> str:
    """What ``window="auto"`` chose: rounds per window, and the measured throughput per window."""
    used = {w: result.windows.count(w) for w in sorted(set(result.windows))}
    text = "windows used (W: rounds): " + ", ".join(f"{w}: {n}" for w, n in used.items())
    if result.policy is not None:
        measured = ", ".join(f"W={w}: {s['throughput']:.0f}" for w, s in result.policy["windows"].items()
                             if math.isfinite(s["throughput"])) or "none yet (too few rounds)"
        text += f"\nwindow='auto' chose W={result.policy['chosen']}; measured accepted steps/s: {measured}"
    return text


def _table(header: list[str], rows: list[list]) -> str:
    cells = [header] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _sampler_rows(pair: dict, extra=lambda name, result: []) -> list[list]:
    rows = []
    for i, (name, run) in enumerate(pair["runs"].items()):
        r = run["result"]
        same = "-" if i == 0 else ("yes" if pair["identical"] else "NO")
        rows.append([name, r.rounds, f"{r.nfe:.1f}", f"{run['seconds']:.2f}", same] + extra(name, r))
    return rows


def demo_digits(model_name: str, batch: int, steps: int, window: int | str, seed: int, out: str, progress: bool) -> dict:
    from . import digits
    from .transformer import load_pretrained

    model = load_pretrained(model_name)  # float64 parameters: batch-invariant, so PIT is exact
    data = digits.digits_split()
    x_init = torch.full((batch, digits.LENGTH), digits.MASK_ID, dtype=torch.int64)
    pair = _run_pair(
        model, x_init, mask_id=digits.MASK_ID, vocab_size=digits.VOCAB_SIZE, steps=steps, window=window,
        seed=seed, progress=progress,
    )
    print(f"model: {model_name} (shipped weights), {batch} samples of 8x8 digits, {steps} steps, seed {seed}")
    print(_table(["sampler", "rounds", "nfe", "wall s", "identical"], _sampler_rows(pair)))
    print(f"rounds ratio (sequential / PIT): {pair['ratio']:.2f}x")
    print(_describe_windows(list(pair["runs"].values())[1]["result"]) + "\n")

    classifier = digits.DigitClassifier(data["train_tokens"], data["train_labels"])
    samples = {name: run["result"].tokens for name, run in pair["runs"].items()}
    samples["real (held-out)"] = data["test_tokens"][:batch]  # the same n: entropy estimates are biased by n
    metrics = {name: digits.digit_metrics(tok, classifier, data["train_tokens"]) for name, tok in samples.items()}
    print(_table(
        ["samples", "n", "confidence", "class entropy (bits)", "precision", "NN distance", "copies"],
        [[name, len(samples[name]), f"{m['confidence']:.3f}", f"{m['class_entropy']:.3f}", f"{m['precision']:.3f}",
          f"{m['nn_distance']:.2f}", f"{m['copies']:.3f}"] for name, m in metrics.items()],
    ))
    digits.save_digit_grid({"real (held-out)": samples.pop("real (held-out)"), **samples}, out)
    print(f"\nsaved {out}")
    return {**pair, "metrics": metrics, "out": out}


def demo_oracle(model_name: str, batch: int, steps: int, window: int | str, seed: int, progress: bool) -> dict:
    from ..testing import make_oracle

    oracle = make_oracle(model_name, seed=0)
    x_init = torch.full((batch, oracle.length), oracle.mask_id, dtype=torch.int64)
    pair = _run_pair(
        oracle, x_init, mask_id=oracle.mask_id, vocab_size=oracle.vocab_size, steps=steps, window=window,
        seed=seed, progress=progress,
    )
    exact = oracle.sample(batch, generator=torch.Generator().manual_seed(seed))
    samples = {name: run["result"].tokens for name, run in pair["runs"].items()}
    samples["exact samples"] = exact
    loglik = {}
    for name, tokens in samples.items():
        lp = oracle.log_prob(tokens)
        loglik[name] = (float(lp.mean()), float(lp.std() / len(lp) ** 0.5) if len(lp) > 1 else float("nan"))
    print(f"model: {model_name} oracle (V={oracle.vocab_size}, L={oracle.length}), {batch} samples, {steps} steps, seed {seed}")
    rows = _sampler_rows(pair, lambda name, r: [f"{loglik[name][0]:.3f}", f"{loglik[name][1]:.3f}"])
    mean, se = loglik["exact samples"]
    rows.append(["exact samples (oracle.sample)", "-", "-", "-", "-", f"{mean:.3f}", f"{se:.3f}"])
    print(_table(["sampler", "rounds", "nfe", "wall s", "identical", "mean log-lik", "s.e."], rows))
    print(f"rounds ratio (sequential / PIT): {pair['ratio']:.2f}x")
    print(_describe_windows(list(pair["runs"].values())[1]["result"]))
    return {**pair, "loglik": loglik}


def demo_parallel(model_name: str, mode: str, batch: int, steps: int, window: int, seed: int) -> dict:
    """``torchrun --nproc-per-node N -m pit_sampler demo --parallel batch|window``: sample with
    :mod:`pit_sampler.distributed` on every rank, and on rank 0 also in one process, and print
    (rank 0) the rounds, the rows each rank evaluated, the wall times, the bytes the ranks exchanged
    and whether the tokens are identical to the one-process sequential sample."""
    import torch.distributed as dist

    from .. import distributed

    distributed.init(timeout_s=300.0)
    rank, size = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{torch.cuda.current_device()}") if torch.cuda.is_available() else torch.device("cpu")
    if model_name in DIGIT_MODELS:
        from . import digits
        from .transformer import load_pretrained

        den = load_pretrained(model_name).to(device)
        mask_id, vocab_size, length = digits.MASK_ID, digits.VOCAB_SIZE, digits.LENGTH
    else:
        from ..testing import make_oracle

        den = make_oracle(model_name, seed=0)
        mask_id, vocab_size, length = den.mask_id, den.vocab_size, den.length
    x_init = torch.full((batch, length), mask_id, dtype=torch.int64, device=device)
    common = dict(mask_id=mask_id, vocab_size=vocab_size, num_steps=steps)

    def run(x):
        if mode == "batch":
            return distributed.sample_batch(PITSampler(den, window=window, **common), x, seed=seed)
        result = distributed.WindowParallelPIT(den, window=window, **common).sample(x, seed=seed)
        return result.tokens, result

    run(x_init[: min(batch, size)])  # untimed warm-up on every rank (the first collectives, kernels)
    dist.barrier()
    start = time.perf_counter()
    tokens, result = run(x_init)
    seconds = time.perf_counter() - start
    rows = [None] * size
    dist.all_gather_object(rows, dict(nfe=result.nfe * result.tokens.shape[0], rounds=result.rounds,
                                      exchanged=result.exchanged_bytes, seconds=seconds))
    out = {"mode": mode, "ranks": size, "per_rank": rows}
    if rank == 0:
        TauLeapingSampler(den, **common).sample(x_init[:1], seed=seed)  # warm-ups, untimed
        PITSampler(den, window=window, **common).sample(x_init[:1], seed=seed)
        start = time.perf_counter()
        seq = TauLeapingSampler(den, **common).sample(x_init, seed=seed)
        seq_seconds = time.perf_counter() - start
        start = time.perf_counter()
        one = PITSampler(den, window=window, **common).sample(x_init, seed=seed)
        one_seconds = time.perf_counter() - start
        identical = torch.equal(tokens.cpu(), seq.tokens.cpu())
        print(f"model: {model_name}, {batch} samples, {steps} steps, W={window}, {size} ranks ({mode} parallel), seed {seed}")
        table = [[f"rank {r}", row["rounds"], f"{row['nfe']:.0f}", f"{row['seconds']:.2f}",
                  f"{row['exchanged']:.0f}"] for r, row in enumerate(rows)]
        table += [["one process, PIT", one.rounds, f"{one.nfe * batch:.0f}", f"{one_seconds:.2f}", "-"],
                  ["one process, sequential", seq.rounds, f"{seq.nfe * batch:.0f}", f"{seq_seconds:.2f}", "-"]]
        print(_table(["run", "rounds", "denoiser rows", "wall s", "bytes sent/round"], table))
        print(f"tokens identical to the one-process sequential sample: {'yes' if identical else 'NO'}")
        out.update(identical=identical, one_process_rounds=one.rounds, sequential_rounds=seq.rounds)
    dist.barrier()
    dist.destroy_process_group()
    return out


def demo_text(batch: int, steps: int, window: int | str, seed: int, progress: bool, length: int = 128,
              approx_window: int = 16, show: int = 3) -> dict:
    """Sample ``batch`` sequences of ``length`` tokens from the shipped text model (float64, batch-invariant)
    with tau-leaping, exact PIT (``window``), PIT with ``tol = 0.05`` and PIT ``mode="fixed"`` with
    ``max_iters`` 1 and 2 (both at ``approx_window``), all from ``seed``; print ``show`` decoded samples
    per sampler and the table (rounds, nfe, wall s, identical to tau-leaping, gen-PPL, entropy), with
    the held-out windows scored the same way and the held-out NELBO stored with the weights."""
    import json

    from . import text

    tok = text.load_tokenizer()
    model = text.load_text_model()
    evaluator = text.load_evaluator()
    den = text.text_denoiser(model, tok)
    common = dict(num_steps=steps, progress=progress, **den.sampler_kwargs())
    configs = {
        "tau-leaping": lambda: TauLeapingSampler(den, **common),
        f"PIT exact (W={window})": lambda: PITSampler(den, window=window, **common),
        f"PIT tol=0.05 (W={approx_window})": lambda: PITSampler(den, window=approx_window, tol=0.05, **common),
        f"PIT fixed, 1 iter (W={approx_window})": lambda: PITSampler(
            den, window=approx_window, mode="fixed", max_iters=1, **common),
        f"PIT fixed, 2 iters (W={approx_window})": lambda: PITSampler(
            den, window=approx_window, mode="fixed", max_iters=2, **common),
    }
    x_init = torch.full((batch, length), tok.mask_token_id, dtype=torch.int64)
    den(x_init[:1], torch.ones(1))  # untimed warm-up call (one-time kernel set-up)
    runs = {}
    for name, make in configs.items():
        sampler = make()
        start = time.perf_counter()
        result = sampler.sample(x_init, seed=seed)
        runs[name] = {"result": result, "seconds": time.perf_counter() - start}
    reference = runs["tau-leaping"]["result"].tokens
    held = text.heldout_windows(tok, length)
    scores = {}
    for name, run in runs.items():
        run["identical"] = torch.equal(run["result"].tokens, reference)
        scores[name] = run["result"].tokens
    scores["held-out text"] = held
    metrics = {name: {"gen_ppl": text.generative_perplexity(evaluator, tokens), "entropy": text.unigram_entropy(tokens),
                      "n": tokens.shape[0]} for name, tokens in scores.items()}
    print(f"model: text (shipped {type(model).__name__}, float64), {batch} samples of {length} tokens, {steps} steps, seed {seed}\n")
    for name, run in runs.items():
        print(f"{name}:")
        for line in text.decode(tok, run["result"].tokens[:show]):
            print(f"  > {line}")
        print()
    rows = []
    for name, run in runs.items():
        r, m = run["result"], metrics[name]
        same = "-" if name == "tau-leaping" else ("yes" if run["identical"] else "no")
        rows.append([name, r.rounds, f"{r.nfe:.1f}", f"{run['seconds']:.1f}", same, "yes" if r.exact else "no",
                     f"{m['gen_ppl']:.1f}", f"{m['entropy']:.3f}"])
    m = metrics["held-out text"]
    rows.append([f"held-out text ({m['n']} windows)", "-", "-", "-", "-", "-", f"{m['gen_ppl']:.1f}", f"{m['entropy']:.3f}"])
    print(_table(["samples", "rounds", "nfe", "wall s", "identical", "exact", "gen-PPL", "entropy (nats)"], rows))
    seq, pit = runs["tau-leaping"]["result"], list(runs.values())[1]["result"]
    print(f"rounds ratio (sequential / exact PIT): {seq.rounds / pit.rounds:.2f}x")
    print(_describe_windows(pit))
    record = text.TEXT_DIR / "training.json"
    nelbo = json.loads(record.read_text()).get("heldout_nelbo") if record.is_file() else None
    if nelbo is not None:
        print(f"held-out NELBO of the masked LM: {nelbo:.3f} nats/token (measured by the training run, training.json)")
    return {"runs": runs, "metrics": metrics, "identical": runs[f"PIT exact (W={window})"]["identical"],
            "ratio": seq.rounds / pit.rounds, "heldout_nelbo": nelbo}


def demo_text_prompt(prompt: str, max_new_tokens: int, steps: int, window: int | str, seed: int,
                     model: str = "text", block_length: int = 16) -> dict:
    """``demo --model text --prompt TEXT``: continue ``TEXT`` by ``max_new_tokens`` tokens and fill its
    gaps (``<gap:n>``: ``n`` tokens) with the shipped text model (``model="text-blocks"``: the
    block-causal one, blocks of ``block_length``, with its cache), text in and text out
    (:func:`pit_sampler.generate.generate`), with the sequential sampler and with PIT from the same
    seed; prints both texts, the rounds, and whether the tokens are identical."""
    from ..generate import generate
    from . import text, text_blocks

    tok = text.load_tokenizer()
    if model == "text-blocks":
        den = text_blocks.block_denoiser(text_blocks.load_block_model(), tok, block_length)
    else:
        den = text.text_denoiser(text.load_text_model(), tok)
    outs = {name: generate(den, tok, prompt, max_new_tokens=max_new_tokens, num_steps=steps, sampler=name,
                           seed=seed, **({"window": window} if name == "pit" else {}))
            for name in ("sequential", "pit")}
    identical = torch.equal(outs["sequential"].sequences, outs["pit"].sequences)
    print(f"model: {model} (shipped), prompt {prompt!r}, {max_new_tokens} new tokens, {steps} steps, seed {seed}")
    for name, out in outs.items():
        print(f"{name} ({out.rounds} rounds): {out.texts[0]}")
    print(f"identical: {'yes' if identical else 'NO'}")
    return {"outputs": outs, "identical": identical}
