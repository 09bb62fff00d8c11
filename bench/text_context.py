"""How much the shipped text model uses its context: held-out cross-entropy of masked positions at
several masking fractions, against the unigram cross-entropy (a model that ignores context).

    python -m bench.text_context > bench/results/text-context-cpu-2026-12-01.md

A context-free model scores at best the unigram cross-entropy at every masking fraction; the gap
below it at low fractions (much context visible) is what the model learned from context. The
baseline here uses the held-out windows' own token frequencies (no download needed), which is
optimistic for the baseline: it is fitted to the very tokens it scores.
"""

from __future__ import annotations

import datetime

import torch

from pit_sampler.models import text


def main() -> None:
    torch.set_num_threads(1)
    tok = text.load_tokenizer()
    model = text.load_text_model(dtype=torch.float32)  # scores only: no exactness needed
    held = text.heldout_windows(tok)
    unigram = text.unigram_cross_entropy(held, held, len(tok), smoothing=0.0)
    print(f"# Context use of the shipped text model (held-out, {held.shape[0]} windows of {held.shape[1]}, "
          f"{datetime.date.today().isoformat()})\n")
    print(f"unigram cross-entropy of the held-out tokens under their own frequencies: {unigram:.3f} nats "
          "(an optimistic context-free baseline: it is fitted to the held-out text)\n")
    print("| masked fraction | cross-entropy of masked positions (nats) | gain over unigram |")
    print("|---|---|---|")
    for fraction in (0.05, 0.25, 0.5, 0.75, 0.95):
        ce = text.masked_fraction_ce(model, held, tok.mask_token_id, fraction)
        print(f"| {fraction:.2f} | {ce:.3f} | {unigram - ce:+.3f} |")


if __name__ == "__main__":
    main()
