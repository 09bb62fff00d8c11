"""Build script: the Python package, the Triton kernels shipped inside it, and the native extension.

The extension ``pit_sampler._C`` (csrc/: C++ CPU kernels, plus CUDA C++ kernels on GPU builds) is built
with ``torch.utils.cpp_extension.BuildExtension`` (ninja) against the installed torch, so install with
torch already present and without build isolation::

    pip install --no-build-isolation -e .

``PIT_SAMPLER_BUILD=auto|cpu|cuda|none`` chooses what is built (see csrc/native_build.py); with
``none`` (or a failed ``auto`` build) the package is pure Python and runs on the reference and Triton
backends.
"""

import runpy
import warnings
from pathlib import Path

from setuptools import find_packages, setup

build = runpy.run_path(str(Path(__file__).resolve().parent / "csrc" / "native_build.py"))


def native_extension() -> tuple[list, dict]:
    """``(ext_modules, cmdclass)`` for the requested build mode."""
    mode = build["mode"]()
    if mode == "none":
        return [], {}
    try:
        from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
    except ImportError as err:
        message = (
            "pit_sampler's native extension needs torch at build time: install torch first, then "
            "`pip install --no-build-isolation .` (or set PIT_SAMPLER_BUILD=none)"
        )
        if mode == "auto":
            warnings.warn(f"{message}; building without it ({err})")
            return [], {}
        raise RuntimeError(message) from err

    class OptionalBuildExtension(BuildExtension):
        """``BuildExtension`` that, in ``auto`` mode, warns instead of failing when the build fails."""

        def run(self):
            try:
                super().run()
            except Exception as err:  # any compiler or toolchain failure
                if mode != "auto":
                    raise
                warnings.warn(
                    f"building pit_sampler._C failed ({err}); pit_sampler will run without its native kernels. "
                    "Set PIT_SAMPLER_BUILD=cpu to see the error, or PIT_SAMPLER_BUILD=none to skip the build."
                )
                self.extensions = []
                self.distribution.ext_modules = []

    cuda = build["with_cuda"](mode)
    kind = CUDAExtension if cuda else CppExtension
    ext = kind(
        "pit_sampler._C",
        [str(Path(s).relative_to(Path(__file__).resolve().parent)) for s in build["sources"](cuda)],
        extra_compile_args=build["extra_compile_args"](cuda),
        extra_link_args=list(build["LD_FLAGS"]),
    )
    return [ext], {"build_ext": OptionalBuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = native_extension()

setup(
    packages=find_packages(include=["pit_sampler", "pit_sampler.*"]) + ["pit_sampler.triton_kernels"],
    package_dir={"pit_sampler.triton_kernels": "triton_kernels"},
    package_data={"pit_sampler.models": ["weights/*.safetensors", "weights/text/*", "weights/text/*/*"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
