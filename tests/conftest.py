"""Test-session setup: without a GPU, the Triton kernels run in Triton's interpreter.

``TRITON_INTERPRET=1`` only takes effect if set before :mod:`pit_sampler` (which defines the kernels)
is first imported, hence here. It changes no other test: on CPU the ops' automatic backend choice
never picks Triton (``pit_sampler.ops``), so only tests that ask for ``"triton"`` run the interpreter.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
