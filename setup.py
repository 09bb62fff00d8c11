"""Build script: the Python package, the Triton kernels shipped inside it, and (later) the C++ extension."""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["pit_sampler", "pit_sampler.*"]) + ["pit_sampler.triton_kernels"],
    package_dir={"pit_sampler.triton_kernels": "triton_kernels"},
    package_data={"pit_sampler": ["weights/*.safetensors"]},
)
