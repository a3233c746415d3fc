#!/usr/bin/env bash
# Create the TPU VM / pod slice through a queued resource and wait until it is ACTIVE.
# Runs tpu/aot_check.sh first (the configured run must fit the slice) unless SKIP_AOT=1.
#
#   PROJECT=my-proj ZONE=us-west4-a ACCELERATOR_TYPE=v5litepod-256 PROVISIONING=spot tpu/create.sh
# Extra: VALID_UNTIL (e.g. 6h: give up if not provisioned by then), POLL_SECONDS (default 60),
#        RESERVATION (with PROVISIONING=reserved, a specific reservation name).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/config.sh"
need gcloud "install the Google Cloud CLI"
[[ -n "$PROJECT" ]] || { echo "error: set PROJECT (or run: gcloud config set project ID)" >&2; exit 2; }

if [[ "${SKIP_AOT:-0}" != 1 ]]; then
  "$here/aot_check.sh" || { echo "error: the AOT check failed; fix the configuration (or SKIP_AOT=1)" >&2; exit 1; }
fi

case "$PROVISIONING" in
  spot)      prov=(--spot) ;;
  reserved)  prov=(--reserved); [[ -n "${RESERVATION:-}" ]] && prov+=(--reservation "$RESERVATION") ;;
  on-demand) prov=() ;;
  *) echo "error: PROVISIONING=$PROVISIONING; expected spot, reserved or on-demand" >&2; exit 2 ;;
esac
[[ -n "${VALID_UNTIL:-}" ]] && prov+=(--valid-until-duration "$VALID_UNTIL")

if gcloud compute tpus queued-resources describe "$QR_ID" "${GCLOUD_TPU[@]}" >/dev/null 2>&1; then
  echo "queued resource $QR_ID exists already"
else
  echo "creating queued resource $QR_ID: $ACCELERATOR_TYPE ($RUNTIME_VERSION, $PROVISIONING) as node $TPU_NAME in $ZONE"
  gcloud compute tpus queued-resources create "$QR_ID" "${GCLOUD_TPU[@]}" \
    --node-id "$TPU_NAME" --accelerator-type "$ACCELERATOR_TYPE" --runtime-version "$RUNTIME_VERSION" "${prov[@]}"
fi

while true; do
  state=$(gcloud compute tpus queued-resources describe "$QR_ID" "${GCLOUD_TPU[@]}" --format='value(state.state)')
  echo "$(date +%H:%M:%S) $QR_ID: $state"
  case "$state" in
    ACTIVE) break ;;
    FAILED|SUSPENDED|SUSPENDING)
      echo "error: queued resource $QR_ID is $state; delete it (tpu/delete.sh) and create again" >&2; exit 1 ;;
  esac
  sleep "${POLL_SECONDS:-60}"
done
echo "ready: $TPU_NAME ($ACCELERATOR_TYPE). Next: tpu/setup.sh, then tpu/launch.sh"
