"""Test-session setup: without a GPU, the Triton kernels run in Triton's interpreter; the tiers.

``TRITON_INTERPRET=1`` only takes effect if set before :mod:`pit_sampler` (which defines the kernels)
is first imported, hence here. It changes no other test: on CPU the ops' automatic backend choice
never picks Triton (``pit_sampler.ops``), so only tests that ask for ``"triton"`` run the interpreter.

README's command runs the suite on two ``pytest-xdist`` workers (``-n 2``); each worker uses one torch
thread, so they share two cores without oversubscribing them. The default and extended tiers:
``tests/tiers.py``.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
