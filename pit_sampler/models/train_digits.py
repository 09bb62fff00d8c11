"""Train the masked-diffusion transformer on the scikit-learn 8x8 digits (CPU, fixed seed).

    python -m pit_sampler.models.train_digits                    # time-agnostic -> pit_sampler/models/weights/digits.safetensors
    python -m pit_sampler.models.train_digits --time-conditioned # -> pit_sampler/models/weights/digits_time.safetensors

Objective: :func:`pit_sampler.models.masked_diffusion_loss`, the MDLM/RADD continuous-time NELBO
per position with the log-linear schedule (masked-position cross-entropy weighted by ``1 / t``).
AdamW with linear warm-up and cosine decay, gradient clipping, and an exponential moving average
(EMA) of the parameters, which is what is saved. The training split of :func:`pit_sampler.models.digits.digits_split`
is used; the held-out NELBO (EMA weights, fixed noise) is reported at the end and stored in the
file's metadata with the command, the wall time and the final training loss.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from . import digits
from .transformer import WEIGHTS_DIR, PRETRAINED, MaskedDiffusionTransformer, masked_diffusion_loss, save_model

ARCH = dict(d_model=64, n_heads=4, n_layers=4, dropout=0.0, grid=digits.GRID)


@torch.no_grad()
def heldout_nelbo(model: MaskedDiffusionTransformer, tokens: torch.Tensor, repeats: int = 8, seed: int = 1234) -> float:
    """Mean of :func:`masked_diffusion_loss` over ``repeats`` passes of ``tokens`` with fixed noise (eval mode)."""
    was_training = model.training
    model.eval()
    g = torch.Generator().manual_seed(seed)
    total = sum(float(masked_diffusion_loss(model, tokens, generator=g)) for _ in range(repeats))
    model.train(was_training)
    return total / repeats


def train(
    *,
    steps: int = 3000,
    batch_size: int = 64,
    lr: float = 3e-3,
    warmup: int = 100,
    ema_decay: float = 0.995,
    seed: int = 0,
    time_conditioned: bool = False,
    arch: dict | None = None,
    log_every: int = 100,
    out=None,
    command: str = "",
) -> tuple[MaskedDiffusionTransformer, dict]:
    """Train and return ``(ema_model, report)``; saves to ``out`` (a path) if given.

    Learning rate: ``lr * (s + 1) / warmup`` at step ``s < warmup``, then cosine decay to ``0.1 lr``.
    EMA: ``theta_ema <- decay * theta_ema + (1 - decay) * theta`` after every step.
    """
    if not (isinstance(steps, int) and steps >= 1):
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    torch.manual_seed(seed)
    data = digits.digits_split()
    x_train, x_test = data["train_tokens"], data["test_tokens"]
    model = MaskedDiffusionTransformer(
        digits.VOCAB_SIZE, digits.LENGTH, mask_id=digits.MASK_ID, time_conditioned=time_conditioned, **(arch or ARCH)
    )
    ema = MaskedDiffusionTransformer(**model.config)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)

    def lr_at(s: int) -> float:
        if s < warmup:
            return lr * (s + 1) / warmup
        frac = (s - warmup) / max(1, steps - warmup)
        return lr * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))

    g = torch.Generator().manual_seed(seed)
    start, cpu_start, recent = time.time(), time.process_time(), []
    perm, cursor = torch.randperm(len(x_train), generator=g), 0
    for s in range(steps):
        if cursor + batch_size > len(x_train):
            perm, cursor = torch.randperm(len(x_train), generator=g), 0
        batch = x_train[perm[cursor : cursor + batch_size]]
        cursor += batch_size
        for group in opt.param_groups:
            group["lr"] = lr_at(s)
        loss = masked_diffusion_loss(model, batch, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - ema_decay)
        recent = (recent + [loss.item()])[-100:]
        if log_every and ((s + 1) % log_every == 0 or s + 1 == steps):
            line = f"step {s + 1:5d}  loss(avg last {len(recent)}) {sum(recent) / len(recent):.4f}  {time.time() - start:6.1f}s"
            print(line, flush=True)
    seconds, cpu_seconds = time.time() - start, time.process_time() - cpu_start
    ema.eval()
    report = {
        "command": command,
        "steps": steps,
        "batch_size": batch_size,
        "seed": seed,
        "train_seconds": round(seconds, 1),
        "train_cpu_seconds": round(cpu_seconds, 1),
        "final_train_loss": round(sum(recent) / len(recent), 4),
        "heldout_nelbo": round(heldout_nelbo(ema, x_test), 4),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        save_model(ema, out, metadata=report)
    return ema, report


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m pit_sampler.models.train_digits", description=__doc__.split("\n\n")[0])
    p.add_argument("--time-conditioned", action="store_true", help="train the MDLM-style time-conditioned variant")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: fastest for this small model)")
    p.add_argument("--out", default=None, help="output .safetensors (default: the shipped weights file)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    name = "digits-time" if args.time_conditioned else "digits"
    out = args.out or str(WEIGHTS_DIR / PRETRAINED[name])
    command = "python -m pit_sampler.models.train_digits " + " ".join(sys.argv[1:] if argv is None else argv)
    _, report = train(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        time_conditioned=args.time_conditioned,
        out=out,
        command=command.strip(),
    )
    print(f"saved {out}: " + ", ".join(f"{k}={v}" for k, v in report.items()))
    return report


if __name__ == "__main__":
    main()
