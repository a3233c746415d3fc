#!/usr/bin/env bash
# GPU check: train attractor-small-140m and gpt-small-140m on synthetic tokens (bfloat16, a few hundred steps each)
# and print tokens/s, MFU and peak GPU memory; then ~2-3 min of attractor-sudoku-27m training on generated hard
# sudokus in the paper's data format (rows/s, solver iterations and residuals). JSON summaries in
# benchmarks/results/gpu_check.json and puzzle_check.json. Within 8 minutes on one H200 (hard budget:
# GPU_CHECK_BUDGET seconds, default 470).
#
#   benchmarks/gpu_check.sh                 # on a machine with an NVIDIA GPU
#   benchmarks/gpu_check.sh --smoke         # anywhere (CPU): tiny presets, a few steps
#   benchmarks/gpu_check.sh --attention-impl cudnn --batch-size 32   # extra flags go to gpu_check.py
#
# Environment: PYTHON (default .venv/bin/python, else python3), GPU_CHECK_BUDGET (seconds), XLA_FLAGS (appended to).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

smoke=0
for arg in "$@"; do [[ "$arg" == "--smoke" ]] && smoke=1; done

if [[ $smoke == 0 ]]; then
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  fi
  platform=$("$PYTHON" -c 'import jax; print(jax.devices()[0].platform)' 2>/dev/null || echo none)
  if [[ "$platform" != "gpu" ]]; then
    jv=$("$PYTHON" -c 'import jax; print(jax.__version__)' 2>/dev/null || echo "")
    echo "error: JAX sees no GPU (platform: $platform); install the CUDA build: $PYTHON -m pip install \"jax[cuda12]${jv:+==$jv}\" (or run with --smoke)" >&2
    exit 2
  fi
  # Single-GPU run: let XLA use most of the memory and overlap what it can; flags are appended, never replaced.
  export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
fi

exec "$PYTHON" benchmarks/gpu_check.py --budget "${GPU_CHECK_BUDGET:-$([[ $smoke == 1 ]] && echo 420 || echo 470)}" "$@"
