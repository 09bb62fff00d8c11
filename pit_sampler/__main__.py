"""Command line: ``python -m pit_sampler demo [--model M]`` (:mod:`pit_sampler.models.demo`).

``--model digits`` (default) / ``digits-time``: the shipped masked-diffusion transformer trained on
the scikit-learn digits; ``--model mixture|hmm|independent``: an exact oracle; ``--model text``: the
shipped masked-diffusion LM on Debian's fortunes (docs/text-model.md). Both samplers run
from the same seed; the demo prints rounds, nfe, wall time, whether the tokens are identical, and
quality metrics.
"""

from __future__ import annotations

import argparse
import os
import sys

from .models.demo import DIGIT_MODELS, ORACLE_MODELS, TEXT_MODELS, demo_digits, demo_oracle, demo_text


def _window(text: str):
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 'auto' or an int >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 'auto' or an int >= 1, got {value}")
    return value


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m pit_sampler", description="pit-sampler command line")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="sample with tau-leaping and PIT from the same seed and compare")
    demo.add_argument("--model", default="digits", choices=DIGIT_MODELS + ORACLE_MODELS + TEXT_MODELS)
    demo.add_argument("--batch", type=int, default=None, help="samples (default: 64 for digits, 256 for oracles, 2 for text)")
    demo.add_argument("--steps", type=int, default=256, help="tau-leaping steps N")
    demo.add_argument("--window", type=_window, default="auto", help="PIT window W: an int, or auto (default)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="digits_samples.png", help="PNG path for the digits models")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    args = parser.parse_args(argv)
    for flag in ("batch", "steps"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            parser.error(f"--{flag} must be >= 1, got {value}")
    progress = not args.no_progress
    if args.model in DIGIT_MODELS:
        folder = os.path.dirname(os.path.abspath(args.out))
        if not os.path.isdir(folder):  # check before sampling, not after
            parser.error(f"--out {args.out}: the folder {folder} does not exist")
        if not os.access(folder, os.W_OK):
            parser.error(f"--out {args.out}: the folder {folder} is not writable")
        return demo_digits(args.model, args.batch or 64, args.steps, args.window, args.seed, args.out, progress)
    if args.model in TEXT_MODELS:
        return demo_text(args.batch or 2, args.steps, args.window, args.seed, progress)
    return demo_oracle(args.model, args.batch or 256, args.steps, args.window, args.seed, progress)


if __name__ == "__main__":
    main(sys.argv[1:])
