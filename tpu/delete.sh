#!/usr/bin/env bash
# Delete the queued resource and its TPU slice (stops billing). WORKDIR on GCS is kept.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/config.sh"
need gcloud
gcloud compute tpus queued-resources delete "$QR_ID" "${GCLOUD_TPU[@]}" --force --quiet
