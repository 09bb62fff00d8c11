"""``python -m pit_sampler demo --model text-blocks``: block diffusion on the shipped block-causal model.

The model is :func:`pit_sampler.models.text_blocks.load_block_model` (a ``Qwen2ForCausalLM`` trained
BD3-LM style on the fortunes, float64: batch invariant, so exact Picard reproduces the sequential
tokens) through :class:`~pit_sampler.block_causal.HFBlockCausalLM`. Blocks of ``block_length``
positions are sampled left to right, each by ``steps`` steps of its own process, four ways from the
same seed: sequential tau-leaping and exact PIT (``window``), each without the cache (every call
recomputes the prefix) and with it (the prefix encoded once per block; a call processes the block
only). Prints decoded samples and, per way: rounds (sequential model calls), token positions the
model processed per round (encodings included) and per generated token, wall time (the fastest of two interleaved runs),
whether the tokens equal the first way's, gen-PPL under the shipped evaluator and the unigram
entropy; then the held-out NELBO of the block model next to the masked LM's (``training.json``).
"""

from __future__ import annotations

import json

import torch

from ..samplers import PITSampler, TauLeapingSampler
from .demo import _describe_windows, _table, timed_runs


def demo_text_blocks(batch: int, steps: int, window: int | str, seed: int, progress: bool, block_length: int = 16,
                     length: int = 128, show: int = 2) -> dict:
    """The demo (module docstring): ``batch`` samples of ``length`` tokens in blocks of ``block_length``."""
    from . import text, text_blocks

    tok = text.load_tokenizer()
    model = text_blocks.load_block_model()
    den = text_blocks.block_denoiser(model, tok, block_length)
    common = dict(num_steps=steps, progress=progress, **den.sampler_kwargs())
    makers = {}
    for cache in (False, True):
        tag = "cache" if cache else "no cache"
        makers[f"sequential, {tag}"] = lambda cache=cache: TauLeapingSampler(den, cache=cache, **common)
        makers[f"PIT exact (W={window}), {tag}"] = lambda cache=cache: PITSampler(den, window=window, cache=cache,
                                                                                   **common)
    x_init = torch.full((batch, length), tok.mask_token_id, dtype=torch.int64)
    den(x_init[:1, :block_length], torch.ones(1))  # untimed warm-up call
    runs = timed_runs(makers, x_init, seed)
    reference = next(iter(runs.values()))["result"].tokens
    evaluator = text.load_evaluator()
    print(f"model: text-blocks (shipped {type(model).__name__}, block-causal, float64), {batch} samples of {length} "
          f"tokens in blocks of {block_length}, {steps} steps per block, seed {seed}\n")
    for line in text.decode(tok, reference[:show]):
        print(f"  > {line}")
    print()
    rows, generated = [], batch * length
    for i, (name, run) in enumerate(runs.items()):
        r = run["result"]
        run["identical"] = torch.equal(r.tokens, reference)
        run["gen_ppl"], run["entropy"] = text.generative_perplexity(evaluator, r.tokens), text.unigram_entropy(r.tokens)
        rows.append([name, r.rounds, f"{r.positions / r.rounds:.0f}", f"{r.positions / generated:.1f}",
                     f"{run['seconds']:.2f}", "-" if i == 0 else ("yes" if run["identical"] else "NO"),
                     f"{run['gen_ppl']:.1f}", f"{run['entropy']:.3f}"])
    print(_table(["samples", "rounds", "positions/round", "positions/token", "wall s", "identical", "gen-PPL",
                  "entropy (nats)"], rows))
    names = list(runs)
    seq, pit = runs[names[2]], runs[names[3]]
    print(f"with the cache: exact PIT {seq['result'].rounds / pit['result'].rounds:.2f}x fewer rounds, "
          f"{seq['seconds'] / pit['seconds']:.2f}x the speed of sequential")
    print(_describe_windows(pit["result"]))
    record = json.loads((text.TEXT_DIR / "training.json").read_text())
    nelbo = record.get("heldout_block_nelbo", {}).get(str(block_length))
    if nelbo is not None:
        print(f"held-out NELBO: block model {nelbo:.3f} nats/token at block length {block_length}, masked LM "
              f"{record['heldout_nelbo']:.3f} (training.json)")
    return {"runs": runs, "identical": all(run["identical"] for run in runs.values()), "heldout_nelbo": nelbo}
