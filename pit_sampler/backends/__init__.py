"""The backends of the ops, registered in :mod:`.registry` on import: ``reference`` (pure PyTorch,
any device) always; ``native`` (:mod:`.native`: C++ CPU and CUDA C++ kernels of the extension) when
it is built or can be; ``triton`` (:mod:`.triton`) when Triton is importable."""

from .. import maskgit_reference, reference
from .registry import Backend, register_backend

register_backend(Backend(
    "reference",
    {"sweep": reference.sweep, "unmask_table": reference.unmask_table, "maskgit_sweep": maskgit_reference.maskgit_sweep},
    lambda device: True,
))

from . import native, triton  # noqa: E402,F401  (each registers itself if its requirements are met)
