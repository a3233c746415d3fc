#!/usr/bin/env bash
# Compile the exact train step of the configured run for ACCELERATOR_TYPE on this machine (CPU is enough; needs
# libtpu: pip install "jax[tpu]==$JAX_VERSION") and report per-chip memory. Exit 0: fits; 1: does not fit;
# 2: bad configuration. Run it before create.sh (create.sh runs it for you unless SKIP_AOT=1).
#
#   PRESET=attractor-large-770m ACCELERATOR_TYPE=v5litepod-256 MESH=fsdp=64,tensor=4 tpu/aot_check.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PROJECT=${PROJECT:-none}  # not needed here; skip the gcloud lookup
source "$here/config.sh"
cd "$here/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
: "${AOT_JSON:=${TMPDIR:-/tmp}/aot_${RUN_NAME}.json}"
echo "AOT check: $PRESET on $ACCELERATOR_TYPE, mesh $MESH, batch $BATCH_SIZE x $SEQ_LEN, grad_accum $GRAD_ACCUM, $DTYPE"
# JAX_PLATFORMS=cpu: never touch local accelerators (this also runs on a TPU VM next to a training job).
JAX_PLATFORMS=cpu exec "$PYTHON" -m attractor_jax.train.aot --topology "$ACCELERATOR_TYPE" "${TRAIN_ARGS[@]}" \
  --json "$AOT_JSON"
