"""Train the text model from Debian's fortunes: tokenizer, masked-diffusion LM, evaluator (CPU, fixed seed).

    cd /tmp && apt-get download fortunes=1:1.99.1-7.3 fortunes-min=1:1.99.1-7.3
    for f in fortunes*_all.deb; do dpkg-deb -x "$f" /tmp/fortunes; done
    python -m pit_sampler.models.train_text --fortunes /tmp/fortunes/usr/share/games/fortunes

writes ``pit_sampler/models/weights/text/`` (or ``--out``): ``mdlm/`` (``ModernBertForMaskedLM`` and the
tokenizer), ``evaluator/`` (``GPT2LMHeadModel``), ``heldout.txt.gz`` (the held-out quotations),
``COPYRIGHT.fortunes`` (from ``--copyright``, default the packages' copyright file next to the
corpus) and ``training.json`` (the command, the settings, wall times, losses and held-out metrics).

1. Corpus and split: :func:`pit_sampler.models.text.read_fortunes`, :func:`~pit_sampler.models.text.split_quotes`.
2. Tokenizer: :func:`~pit_sampler.models.text.train_tokenizer` on the training quotations.
3. Masked LM: ``ModernBertForMaskedLM`` (``--arch modernbert``, default; ``bert``: ``BertForMaskedLM``;
   :data:`MLM_CONFIGS`), objective: the MDLM/RADD NELBO (the continuous-time bound of
   :func:`pit_sampler.models.masked_diffusion_loss`, masked-position cross-entropy weighted by
   ``1 / t``), estimated in RADD's equivalent lower-variance form by the number of masked
   positions (:func:`pit_sampler.models.text.masked_count_loss`); the held-out NELBO is measured
   with ``masked_diffusion_loss`` itself. Windows of the
   packed training stream at random offsets; odd steps use ``L = 256`` windows (half the rows, the
   same tokens), so the model works at both lengths. AdamW, linear warm-up, cosine decay to 10%,
   gradient clipping at 1, an EMA of the parameters (what is saved, in float16) with decay
   ``min(ema_decay, (1 + s) / (10 + s))`` at step ``s`` (a warm-up, so the random initialisation fades).
4. Evaluator: ``GPT2LMHeadModel`` (:data:`EVALUATOR_CONFIG`), next-token cross-entropy on
   ``L = 128`` windows of the same stream, same optimiser, saved in float16.

Everything draws from generators seeded with ``--seed``; with the same torch version, thread count
and CPU kind the run repeats bit for bit (floating-point sums depend on the thread count).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from . import text, text_blocks

_SIZE = dict(hidden_size=192, num_hidden_layers=4, num_attention_heads=4)
MLM_CONFIGS = {
    "bert": dict(_SIZE, intermediate_size=768, max_position_embeddings=256, type_vocab_size=1, hidden_dropout_prob=0.0,
                 attention_probs_dropout_prob=0.0),
    "modernbert": dict(  # two local layers (a window of 8 positions), then two global ones
        _SIZE, intermediate_size=384, max_position_embeddings=512, local_attention=8,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "full_attention"],
        attention_dropout=0.0, mlp_dropout=0.0, embedding_dropout=0.0),
}
EVALUATOR_CONFIG = dict(n_embd=192, n_layer=4, n_head=4, n_positions=256, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    """``lr (s + 1) / warmup`` during warm-up, then cosine decay from ``lr`` to ``0.1 lr``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))


def _optimise(model, loss_fn, *, steps, lr, warmup, ema_decay, log_every, name, minutes=None):
    """Run ``steps`` AdamW steps of ``loss_fn(step)``, then copy the EMA of the parameters into the
    model; returns a report. ``minutes`` stops early (reported) if the wall time runs out."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    params = dict(model.named_parameters())  # a tied weight appears once (not via state_dict's two keys)
    ema = {k: p.detach().clone() for k, p in params.items()}
    start, cpu_start, recent, done = time.time(), time.process_time(), [], 0
    for s in range(steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(s, steps, lr, warmup)
        loss = loss_fn(s)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(ema_decay, (1 + s) / (10 + s))  # EMA warm-up: early steps do not keep the random init
        with torch.no_grad():
            for k, p in params.items():
                ema[k].lerp_(p.detach(), 1 - decay)
        recent = (recent + [loss.item()])[-100:]
        done = s + 1
        if log_every and (done % log_every == 0 or done == steps):
            print(f"[{name}] step {done:5d}  loss(avg last {len(recent)}) {sum(recent) / len(recent):.4f}  "
                  f"{time.time() - start:7.1f}s", flush=True)
        if minutes is not None and time.time() - start > 60 * minutes:
            print(f"[{name}] stopped at step {done}: the {minutes}-minute budget is spent", flush=True)
            break
    with torch.no_grad():  # the model now holds the EMA parameters
        for k, p in params.items():
            p.copy_(ema[k])
    return {"steps_run": done, "seconds": round(time.time() - start, 1),
            "cpu_seconds": round(time.process_time() - cpu_start, 1),
                 "final_train_loss": round(sum(recent) / len(recent), 4)}


def train(args, command: str) -> dict:
    transformers = text._require("transformers")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    quotes = text.read_fortunes(args.fortunes)
    train_q, held_q = text.split_quotes(quotes, seed=args.split_seed)
    text.write_quotes(held_q, out / "heldout.txt.gz")
    copyright_src = Path(args.copyright) if args.copyright else None
    if copyright_src is None:
        guess = Path(args.fortunes).resolve().parents[2] / "share" / "doc" / "fortunes" / "copyright"
        copyright_src = guess if guess.is_file() else None
    if copyright_src is not None:
        shutil.copyfile(copyright_src, out / "COPYRIGHT.fortunes")
    print(f"corpus: {len(quotes)} quotations ({sum(map(len, quotes))} characters); "
          f"train {len(train_q)}, held out {len(held_q)}", flush=True)

    tok = text.train_tokenizer(train_q, args.vocab_size)
    stream = text.pack_stream(text.encode_quotes(tok, train_q), tok.sep_token_id)
    held = text.heldout_windows(tok, text.LENGTH, held_q)
    print(f"tokenizer: {len(tok)} ids; training stream {stream.numel()} tokens; held-out windows {tuple(held.shape)}", flush=True)

    report = {"command": command, "seed": args.seed, "batch_size": args.batch_size, "lr": args.lr,
              "torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
              "corpus": {"packages": list(text.CORPUS_PACKAGES), "version": text.CORPUS_VERSION,
                         "quotations": len(quotes), "train": len(train_q), "heldout": len(held_q),
                         "train_tokens": stream.numel(), "heldout_windows": held.shape[0]}}
    if "mlm" in args.parts:
        report["mlm"] = train_mlm(args, tok, stream, out / "mdlm", transformers)
        report["heldout_nelbo"] = round(text.heldout_nelbo(text.load_text_model(out / "mdlm"), held, tok.mask_token_id), 4)
    if "blocks" in args.parts:
        report["blocks"] = train_blocks(args, tok, stream, out / "bd3lm", transformers)
        model = text_blocks.load_block_model(out / "bd3lm")
        report["heldout_block_nelbo"] = {str(bl): round(text_blocks.heldout_block_nelbo(model, held, bl, tok.mask_token_id), 4)
                                         for bl in text_blocks.BLOCK_LENGTHS}
    if "evaluator" in args.parts:
        report["evaluator"] = train_evaluator(args, tok, stream, out / "evaluator", transformers)
        report["heldout_gen_ppl"] = round(text.generative_perplexity(text.load_evaluator(out / "evaluator"), held), 2)
    previous = json.loads((out / "training.json").read_text()) if (out / "training.json").is_file() else {}
    if set(args.parts) != {"mlm", "evaluator", "blocks"}:  # keep what an earlier run recorded for the other part
        earlier = previous.get("commands") or ([previous["command"]] if "command" in previous else [])
        report = {**previous, **report, "commands": earlier + [command]}
    report["total_seconds"] = round(time.time() - t0, 1)
    (out / "training.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def train_mlm(args, tok, stream, folder: Path, transformers) -> dict:
    """Train the masked-diffusion LM (``--arch``) and save it (float16) with the tokenizer in ``folder``."""
    torch.manual_seed(args.seed)
    arch = MLM_CONFIGS[args.arch]
    special = dict(pad_token_id=tok.pad_token_id, mask_token_id=tok.mask_token_id, sep_token_id=tok.sep_token_id)
    if args.arch == "bert":
        mlm = transformers.BertForMaskedLM(transformers.BertConfig(vocab_size=len(tok), **special, **arch))
    else:
        config = transformers.ModernBertConfig(vocab_size=len(tok), cls_token_id=tok.sep_token_id,
                                               bos_token_id=tok.sep_token_id, eos_token_id=tok.sep_token_id,
                                               **special, **arch)
        mlm = transformers.ModernBertForMaskedLM(config)
    mlm.train()
    den = text.MaskedLMDenoiser(mlm, tok.mask_token_id, (tok.pad_token_id,))
    g = torch.Generator().manual_seed(args.seed)

    def mlm_loss(s):
        length, rows = (text.LENGTH, args.batch_size) if s % 2 == 0 else (2 * text.LENGTH, args.batch_size // 2)
        return text.masked_count_loss(den, text.random_windows(stream, rows, length, g), generator=g)

    mlm_report = _optimise(mlm, mlm_loss, steps=args.steps, lr=args.lr, warmup=args.warmup,
                                ema_decay=args.ema_decay, log_every=args.log_every, name="mlm", minutes=args.minutes)
    mlm.eval()
    mlm.half().save_pretrained(folder)
    tok.save_pretrained(folder)
    return {"arch": args.arch, "class": type(mlm).__name__, **arch, **mlm_report, "steps": args.steps,
            "parameters": sum(p.numel() for p in mlm.parameters())}


def train_blocks(args, tok, stream, folder: Path, transformers) -> dict:
    """Train the block-causal model (BD3-LM, :mod:`pit_sampler.models.text_blocks`) and save it
    (float16) with the tokenizer in ``folder``: ``L = 128`` windows, block length 16 on even steps and
    32 on odd steps, :func:`~pit_sampler.models.text_blocks.block_count_loss`."""
    torch.manual_seed(args.seed + 2)
    model = text_blocks.new_block_model(tok, transformers)
    model.train()
    g = torch.Generator().manual_seed(args.seed + 2)
    lengths = text_blocks.BLOCK_LENGTHS

    def block_loss(s):
        x0 = text.random_windows(stream, args.batch_size, text.LENGTH, g)
        return text_blocks.block_count_loss(model, x0, lengths[s % len(lengths)], tok.mask_token_id, generator=g)

    report = _optimise(model, block_loss, steps=args.block_steps, lr=args.lr, warmup=args.warmup,
                       ema_decay=args.ema_decay, log_every=args.log_every, name="blocks", minutes=args.minutes)
    model.eval()
    model.half().save_pretrained(folder)
    tok.save_pretrained(folder)
    return {"class": type(model).__name__, **text_blocks.BLOCK_MODEL_CONFIG, "block_lengths": list(lengths), **report,
            "steps": args.block_steps, "parameters": sum(p.numel() for p in model.parameters())}


def train_evaluator(args, tok, stream, folder: Path, transformers) -> dict:
    """Train the GPT-2 evaluator and save it (float16) in ``folder``."""
    torch.manual_seed(args.seed + 1)
    ev_config = transformers.GPT2Config(
        vocab_size=len(tok), bos_token_id=tok.sep_token_id, eos_token_id=tok.sep_token_id,
        pad_token_id=tok.pad_token_id, **EVALUATOR_CONFIG,
    )
    ev = transformers.GPT2LMHeadModel(ev_config)
    ev.train()
    g_ev = torch.Generator().manual_seed(args.seed + 1)

    def ev_loss(s):
        x = text.random_windows(stream, args.batch_size, text.LENGTH, g_ev)
        logits = ev(input_ids=x).logits[:, :-1]
        return F.cross_entropy(logits.transpose(1, 2), x[:, 1:])

    ev_report = _optimise(ev, ev_loss, steps=args.eval_steps, lr=args.lr, warmup=args.warmup,
                                  ema_decay=args.ema_decay, log_every=args.log_every, name="evaluator",
                                  minutes=args.eval_minutes)
    ev.eval()
    ev.half().save_pretrained(folder)
    return {"class": type(ev).__name__, **EVALUATOR_CONFIG, **ev_report, "steps": args.eval_steps,
            "parameters": sum(p.numel() for p in ev.parameters())}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m pit_sampler.models.train_text", description=__doc__.split("\n\n")[0])
    p.add_argument("--fortunes", required=True, help="the fortune files: <extracted packages>/usr/share/games/fortunes")
    p.add_argument("--copyright", default=None, help="the packages' copyright file (default: found next to the corpus)")
    p.add_argument("--out", default=str(text.TEXT_DIR), help="output folder (default: the shipped weights folder)")
    p.add_argument("--arch", choices=sorted(MLM_CONFIGS), default="modernbert", help="the masked LM's class")
    p.add_argument("--parts", default="mlm,evaluator", help="what to train: mlm, evaluator, blocks (comma-separated)")
    p.add_argument("--steps", type=int, default=3000, help="masked-LM optimiser steps")
    p.add_argument("--block-steps", type=int, default=1200, help="block-causal model optimiser steps")
    p.add_argument("--eval-steps", type=int, default=1500, help="evaluator optimiser steps")
    p.add_argument("--minutes", type=float, default=None, help="stop the masked LM (or block model) early after this wall time")
    p.add_argument("--eval-minutes", type=float, default=None, help="stop the evaluator early after this wall time")
    p.add_argument("--batch-size", type=int, default=32, help="rows of 128 tokens per step (16 rows of 256 on odd steps)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema-decay", type=float, default=0.995)
    p.add_argument("--vocab-size", type=int, default=text.VOCAB_SIZE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-seed", type=int, default=text.SPLIT_SEED)
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--log-every", type=int, default=100)
    args = p.parse_args(argv)
    args.parts = [x for x in args.parts.split(",") if x]
    if not args.parts or set(args.parts) - {"mlm", "evaluator", "blocks"}:
        p.error(f"--parts must name mlm, evaluator and/or blocks, got {args.parts}")
    torch.set_num_threads(args.threads)
    command = "python -m pit_sampler.models.train_text " + " ".join(sys.argv[1:] if argv is None else argv)
    report = train(args, command.strip())
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
