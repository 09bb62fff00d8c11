#!/usr/bin/env bash
# One command for everything that needs a GPU (tests, kernel checks, microbenchmarks, end to end,
# plots, report) inside a 5.5-minute budget; see bench/README.md and bench/run_gpu.py.
#
#   PIT_GIT_COMMIT=<sha> bash bench/run_gpu.sh                         # on the GPU machine, repo root
#   PIT_SKIP_INSTALL=1 bash bench/run_gpu.sh --device cpu --preset tiny --out-dir /tmp/dry   # CPU dry run
#
# Installs the package (pip install --no-deps --no-build-isolation -e ., which builds the native
# extension for TORCH_CUDA_ARCH_LIST, default 9.0 = H100/H200), then hands over to bench/run_gpu.py.
# Extra arguments go to run_gpu.py (--budget SECONDS, default 330; --device; --preset; --out-dir).
set -u
start=$(date +%s)
cd "$(dirname "$0")/.." || exit 1
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}
logs=$(mktemp -d)
install_args=()
if [ "${PIT_SKIP_INSTALL:-0}" != 1 ]; then
  echo "[run_gpu.sh] pip install --no-deps --no-build-isolation -e . (native build for sm ${TORCH_CUDA_ARCH_LIST})"
  timeout "${PIT_INSTALL_TIMEOUT:-240}" "$PY" -m pip install --no-deps --no-build-isolation -e . >"$logs/install.log" 2>&1
  rc=$?
  echo "[run_gpu.sh] install exit code $rc after $(( $(date +%s) - start )) s"
  install_args=(--install-log "$logs/install.log" --install-rc "$rc")
fi
exec "$PY" -m bench.run_gpu --start "$start" "${install_args[@]}" "$@"
