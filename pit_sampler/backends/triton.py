"""Triton backend (filled in by the Triton-kernels work; registers nothing until then)."""
