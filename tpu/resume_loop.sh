#!/usr/bin/env bash
# Keep a pre-emptible (spot) run going until it finishes: (re)create the slice when it is gone, set it up, run
# the training in the foreground; a pre-emption ends the ssh session, the loop recreates the slice and the same
# command resumes from WORKDIR's latest checkpoint (written on SIGTERM). Stops when the training exits 0.
# MAX_ATTEMPTS (default 20) bounds the loop.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/config.sh"
need gcloud
"$here/aot_check.sh" || exit 1
for attempt in $(seq 1 "${MAX_ATTEMPTS:-20}"); do
  state=$(gcloud compute tpus queued-resources describe "$QR_ID" "${GCLOUD_TPU[@]}" --format='value(state.state)' 2>/dev/null)
  echo "attempt $attempt: $QR_ID is ${state:-absent}"
  if [[ "$state" != ACTIVE ]]; then
    [[ -n "$state" ]] && "$here/delete.sh"
    SKIP_AOT=1 "$here/create.sh" || { sleep 300; continue; }
    "$here/setup.sh" || { sleep 60; continue; }
  fi
  if "$here/launch.sh" --foreground; then
    echo "training finished"; exit 0
  fi
  echo "training interrupted (pre-emption or error); retrying in 60 s"
  sleep 60
done
echo "error: gave up after ${MAX_ATTEMPTS:-20} attempts" >&2
exit 1
