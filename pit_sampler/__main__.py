"""Command line: ``python -m pit_sampler demo [--model M]`` (:mod:`pit_sampler.models.demo`).

``--model digits`` (default) / ``digits-time``: the shipped masked-diffusion transformer trained on
the scikit-learn digits; ``--model mixture|hmm|independent``: an exact oracle; ``--model text``: the
shipped masked-diffusion LM on Debian's fortunes (docs/text-model.md); ``--model text-blocks``: the
shipped block-causal model on the same corpus, with and without its KV cache (docs/blocks.md). Both samplers run
from the same seed; the demo prints rounds, nfe, wall time, whether the tokens are identical, and
quality metrics.

``python -m pit_sampler sample --model DIR --prompt TEXT [...]``: text from a local Hugging Face
masked-LM folder (``AutoModelForMaskedLM`` + ``AutoTokenizer``, no network), through
:func:`pit_sampler.generate.generate`; prints one text per sample. ``--version`` prints the version.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from .models.demo import (DIGIT_MODELS, ORACLE_MODELS, TEXT_MODELS, demo_digits, demo_oracle, demo_parallel,
                          demo_text, demo_text_prompt)
from .models.demo_blocks import demo_text_blocks


def _int_option(low: int, auto: bool = False):
    """An argparse type: an int >= ``low`` (or ``"auto"`` when ``auto``)."""
    want = ("'auto' or " if auto else "") + f"an int >= {low}"

    def parse(text: str):
        if auto and text == "auto":
            return text
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {want}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be {want}, got {value}")
        return value

    return parse


_window = _int_option(1, auto=True)  # --window: "auto" or an int >= 1
_tokens = _int_option(0)  # --max-new-tokens: an int >= 0


@contextlib.contextmanager
def _usage_errors(parser):
    """Turn :func:`~pit_sampler.generate.generate`'s ``TypeError``/``ValueError`` (a bad option or prompt;
    the message names it) into ``parser.error``: the message and exit status 2, no traceback."""
    try:
        yield
    except (TypeError, ValueError) as error:
        parser.error(str(error))


def _add_sample(sub) -> None:
    """The ``sample`` subcommand's arguments."""
    sample = sub.add_parser("sample", help="generate text with a local Hugging Face masked LM folder")
    sample.add_argument("--model", required=True, help="a local folder holding the model and its tokenizer")
    sample.add_argument("--prompt", action="append", default=None,
                        help="prompt text (repeat for a batch); <gap:n> or the mask token marks text to infill")
    sample.add_argument("--max-new-tokens", type=_tokens, default=None,
                        help="tokens generated after the prompt (default: 32, or 0 when the prompt has a gap)")
    sample.add_argument("--steps", type=int, default=None, help="sampler steps (default 1024)")
    sample.add_argument("--sampler", default="pit", choices=("pit", "sequential"))
    sample.add_argument("--window", type=_window, default="auto", help="PIT window W: an int, or auto (default)")
    sample.add_argument("--seed", type=int, default=None, help="seed (default: fresh seeds, printed to stderr)")
    sample.add_argument("--num-return-sequences", type=int, default=1)
    sample.add_argument("--temperature", type=float, default=1.0)
    sample.add_argument("--top-k", type=int, default=None)
    sample.add_argument("--top-p", type=float, default=None)
    sample.add_argument("--dtype", default="float32", choices=("float32", "float64", "bfloat16"),
                        help="the model's dtype (float64: batch-invariant, PIT equals sequential bit for bit)")


def _sample(parser, args) -> dict:
    """Run ``sample``: load the folder (local files only: a block-causal ``*ForCausalLM`` when its
    config has a ``block_length``, else a masked LM), generate, print the texts."""
    import json

    import torch

    from .adapters import HFMaskedLM
    from .block_causal import HFBlockCausalLM
    from .generate import generate, has_gap

    if not os.path.isdir(args.model):
        parser.error(f"--model {args.model}: not a folder")
    for flag in ("steps", "num_return_sequences"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    config = os.path.join(args.model, "config.json")
    blocks = os.path.isfile(config) and "block_length" in json.loads(open(config).read())
    adapter, kind = (HFBlockCausalLM, "block-causal LM") if blocks else (HFMaskedLM, "masked LM")
    try:
        den = adapter.from_pretrained(args.model, dtype=getattr(torch, args.dtype), local_files_only=True)
    except (OSError, ValueError) as error:
        parser.error(f"--model {args.model}: cannot load a {kind} and its tokenizer: {error}")
    prompts = args.prompt or [""]
    max_new = args.max_new_tokens
    if max_new is None:
        max_new = 0 if all(has_gap(p, den.tokenizer) for p in prompts) else 32
    with _usage_errors(parser):
        out = generate(den, prompts=prompts, max_new_tokens=max_new, num_steps=args.steps, sampler=args.sampler,
                       window=args.window, seed=args.seed, num_return_sequences=args.num_return_sequences,
                       temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    if args.seed is None:
        print(f"seeds: {out.seeds.tolist()}", file=sys.stderr)
    for text in out.texts:
        print(text)
    return {"texts": out.texts, "ids": out.ids, "seeds": out.seeds.tolist(), "rounds": out.rounds}


def main(argv: list[str] | None = None) -> dict:
    from . import __version__

    parser = argparse.ArgumentParser(prog="python -m pit_sampler", description="pit-sampler command line")
    parser.add_argument("--version", action="version", version=f"pit-sampler {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_sample(sub)
    demo = sub.add_parser("demo", help="sample with tau-leaping and PIT from the same seed and compare")
    demo.add_argument("--model", default="digits", choices=DIGIT_MODELS + ORACLE_MODELS + TEXT_MODELS)
    demo.add_argument("--batch", type=int, default=None, help="samples (default: 64 for digits, 256 for oracles, 2 for text)")
    demo.add_argument("--steps", type=int, default=256, help="tau-leaping steps N")
    demo.add_argument("--window", type=_window, default="auto", help="PIT window W: an int, or auto (default)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="digits_samples.png", help="PNG path for the digits models")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    demo.add_argument("--prompt", default=None,
                      help="--model text: continue this text (and fill its <gap:n> gaps) instead of the table")
    demo.add_argument("--max-new-tokens", type=_tokens, default=None,
                      help="--model text --prompt: tokens to add (default 32)")
    demo.add_argument("--block-length", type=int, default=None, choices=(16, 32),
                      help="--model text-blocks: the block length (default 16; the model was trained at 16 and 32)")
    demo.add_argument("--parallel", choices=("batch", "window"), default=None,
                      help="sample across the ranks of torchrun (pit_sampler.distributed)")
    args = parser.parse_args(argv)
    if args.command == "sample":
        return _sample(parser, args)
    for flag in ("batch", "steps"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag} must be >= 1, got {value}")
    if args.model not in TEXT_MODELS and (args.prompt is not None or args.max_new_tokens is not None):
        parser.error(f"--prompt and --max-new-tokens need --model text (not --model {args.model})")
    if args.block_length is not None and args.model != "text-blocks":
        parser.error(f"--block-length needs --model text-blocks (not --model {args.model})")
    block_length = args.block_length or 16
    if args.prompt is None and args.max_new_tokens is not None:
        parser.error("--max-new-tokens goes with --prompt (the tokens added after it)")
    progress = not args.no_progress
    if args.parallel is not None:
        if args.model in TEXT_MODELS:
            parser.error("--parallel runs the digits models and the oracles (not --model text)")
        if "RANK" not in os.environ:
            parser.error("--parallel needs several processes: torchrun --nproc-per-node N -m pit_sampler demo --parallel ...")
        window = 8 if args.window == "auto" else args.window  # every rank must run the same windows
        batch = args.batch or (1 if args.parallel == "window" else 64)
        return demo_parallel(args.model, args.parallel, batch, args.steps, window, args.seed)
    if args.model in DIGIT_MODELS:
        folder = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(folder):  # check before sampling, not after
            parser.error(f"--out {args.out}: the folder {folder} does not exist")
        if not os.access(folder, os.W_OK):
            parser.error(f"--out {args.out}: the folder {folder} is not writable")
        return demo_digits(args.model, args.batch or 64, args.steps, args.window, args.seed, args.out, progress)
    if args.prompt is not None:
        with _usage_errors(parser):
            return demo_text_prompt(args.prompt, 32 if args.max_new_tokens is None else args.max_new_tokens,
                                    args.steps, args.window, args.seed, args.model, block_length)
    if args.model == "text-blocks":
        return demo_text_blocks(args.batch or 2, args.steps, args.window, args.seed, progress, block_length)
    if args.model in TEXT_MODELS:
        return demo_text(args.batch or 2, args.steps, args.window, args.seed, progress)
    return demo_oracle(args.model, args.batch or 256, args.steps, args.window, args.seed, progress)


if __name__ == "__main__":
    main(sys.argv[1:])
