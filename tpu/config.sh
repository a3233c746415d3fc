# shellcheck shell=bash
# Shared settings for the tpu/*.sh scripts. Every value is an environment variable with a default; override by
# exporting it (or `VAR=value tpu/launch.sh`). Sourced, not run. No secrets here: gcloud uses your own login.

# --- where -------------------------------------------------------------------------------------------------
: "${PROJECT:=$(gcloud config get-value project 2>/dev/null || true)}"
: "${ZONE:=us-west4-a}"                         # a zone that offers ACCELERATOR_TYPE (v5e: us-west4-a, us-east5-a, ...)
: "${TPU_NAME:=attractor-${USER:-user}}"        # the TPU VM / pod slice (node id)
: "${QR_ID:=${TPU_NAME}-qr}"                    # its queued resource
: "${ACCELERATOR_TYPE:=v5litepod-256}"          # v5litepod-N, v4-N, v5p-N, v6e-N (v4/v5p count TensorCores)
: "${PROVISIONING:=spot}"                       # spot | reserved | on-demand  (spot/reserved: pre-emptible)
if [[ -z "${RUNTIME_VERSION:-}" ]]; then        # TPU VM image; list: gcloud compute tpus versions list --zone $ZONE
  case "$ACCELERATOR_TYPE" in
    v5litepod-*|v5e-*) RUNTIME_VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*)             RUNTIME_VERSION=v2-alpha-tpuv5 ;;
    v6e-*)             RUNTIME_VERSION=v2-alpha-tpuv6e ;;
    *)                 RUNTIME_VERSION=tpu-ubuntu2204-base ;;
  esac
fi

# --- what gets installed on every worker ----------------------------------------------------------------------
: "${JAX_VERSION:=0.10.2}"                      # jax[tpu]==JAX_VERSION (pins the matching libtpu)
: "${PYTHON_VERSION:=3.11}"                     # the package needs >= 3.11; TPU images ship 3.10, so uv fetches it
: "${PACKAGE_SPEC:=}"                           # e.g. git+https://github.com/ORG/attractor_jax@COMMIT; empty: build a
                                                # wheel from this checkout and copy it to the workers
: "${PACKAGE_EXTRAS:=text}"                     # extras to install with the package (text: sentencepiece/tokenizers)
: "${REMOTE_HOME:=attractor}"                   # folder under the workers' $HOME (venv, wheel, logs)

# --- the run (the AOT check compiles exactly this) ------------------------------------------------------------
: "${PRESET:=attractor-large-770m}"
: "${MESH:=fsdp=64,tensor=4}"                   # product must equal the chip count (v5litepod-256: 256)
: "${BATCH_SIZE:=256}"                          # global sequences per optimizer step
: "${SEQ_LEN:=2048}"
: "${GRAD_ACCUM:=1}"
: "${DTYPE:=bfloat16}"
: "${STEPS:=}"                                  # empty: the preset's default
: "${EXTRA_SETS:=}"                             # more overrides, space-separated key=value (e.g. "optim.lr=3e-3")

# --- storage ---------------------------------------------------------------------------------------------------
: "${BUCKET:=}"                                 # gs://BUCKET (no trailing slash); mounted with gcsfuse at GCS_MOUNT
: "${GCS_MOUNT:=/gcs}"                          # the bucket appears at $GCS_MOUNT on every worker
: "${DATA:=}"                                   # --data for training: a local path on the workers, e.g.
                                                # $GCS_MOUNT/data/fineweb (gcsfuse) or $HOME/data (copied by setup.sh),
                                                # or hf://OWNER/NAME (streamed)
: "${DATA_GCS:=}"                               # optional gs:// folder copied to LOCAL_DATA on every worker by setup.sh
: "${LOCAL_DATA:=\$HOME/data}"
: "${RUN_NAME:=${PRESET}-${ACCELERATOR_TYPE}}"
: "${WORKDIR:=${GCS_MOUNT}/runs/${RUN_NAME}}"   # shared by all hosts: checkpoints, config.json, metrics.jsonl

# Arguments shared by `attractor-jax train` and `python -m attractor_jax.train.aot` (bash array TRAIN_ARGS).
TRAIN_ARGS=(--preset "$PRESET" --mesh "$MESH"
            --set "train.batch_size=$BATCH_SIZE" --set "train.seq_len=$SEQ_LEN"
            --set "train.grad_accum=$GRAD_ACCUM" --set "train.dtype=$DTYPE")
[[ -n "$STEPS" ]] && TRAIN_ARGS+=(--steps "$STEPS")
for kv in $EXTRA_SETS; do TRAIN_ARGS+=(--set "$kv"); done

GCLOUD_TPU=(--project "$PROJECT" --zone "$ZONE")

# Run a command on every worker of the slice (gcloud runs them in parallel and prefixes the output).
tpu_ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_TPU[@]}" --worker=all --command "$1"
}

# Quote an array for a remote shell.
quote_args() { local out="" a; for a in "$@"; do out+=" $(printf '%q' "$a")"; done; printf '%s' "${out# }"; }

need() { command -v "$1" >/dev/null 2>&1 || { echo "error: $1 not found on PATH${2:+ ($2)}" >&2; exit 2; }; }
