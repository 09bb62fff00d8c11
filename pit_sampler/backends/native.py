"""C++ CPU / CUDA C++ backend (filled in by the native-kernels work; registers nothing until built)."""
