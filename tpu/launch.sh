#!/usr/bin/env bash
# Start the same `attractor-jax train` command on every host of the slice (ATTRACTOR_JAX_DISTRIBUTED=1 makes the
# CLI call jax.distributed.initialize(), which finds the other hosts from the TPU metadata). WORKDIR must be
# shared by all hosts (the gcsfuse mount of BUCKET). Rerunning the same command resumes from WORKDIR's latest
# checkpoint, e.g. after a pre-emption.
#
#   DATA=/gcs/data/fineweb BUCKET=gs://my-bucket tpu/launch.sh              # detached; logs in ~/attractor/logs
#   tpu/launch.sh --foreground                                              # stream the output, wait for the end
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/config.sh"
need gcloud "install the Google Cloud CLI"
[[ -n "$DATA" ]] || { echo "error: set DATA (a path on the workers, e.g. $GCS_MOUNT/data/..., or hf://...)" >&2; exit 2; }
foreground=0
[[ "${1:-}" == "--foreground" ]] && foreground=1

cmd=$(quote_args "\$HOME/$REMOTE_HOME/venv/bin/attractor-jax" train --data "$DATA" --workdir "$WORKDIR" "${TRAIN_ARGS[@]}")
cmd=${cmd/\\\$HOME/\$HOME}   # let the remote shell expand $HOME
log="\$HOME/$REMOTE_HOME/logs/$RUN_NAME.\$(hostname).log"
pidfile="\$HOME/$REMOTE_HOME/logs/$RUN_NAME.pid"
env_vars="export ATTRACTOR_JAX_DISTRIBUTED=1${LIBTPU_INIT_ARGS:+; export LIBTPU_INIT_ARGS='$LIBTPU_INIT_ARGS'}"
echo "on every worker of $TPU_NAME: $cmd"
if [[ $foreground == 1 ]]; then
  tpu_ssh_all "$env_vars; $cmd 2>&1 | tee -a $log"
else
  tpu_ssh_all "$env_vars; if [[ -f $pidfile ]] && kill -0 \$(cat $pidfile) 2>/dev/null; then echo 'already running'; exit 0; fi; nohup setsid $cmd >> $log 2>&1 < /dev/null & echo \$! > $pidfile; echo \"started pid \$(cat $pidfile) on \$(hostname)\""
  echo "follow with: tpu/status.sh   (stop gracefully, with a checkpoint: tpu/stop.sh)"
fi
