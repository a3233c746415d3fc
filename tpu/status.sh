#!/usr/bin/env bash
# Queued-resource state, and the last lines of every worker's training log.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/config.sh"
need gcloud
gcloud compute tpus queued-resources describe "$QR_ID" "${GCLOUD_TPU[@]}" --format='value(state.state)' || true
tpu_ssh_all "tail -n ${LINES_PER_WORKER:-3} \$HOME/$REMOTE_HOME/logs/$RUN_NAME.\$(hostname).log 2>/dev/null || echo 'no log yet'"
