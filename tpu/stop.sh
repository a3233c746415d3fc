#!/usr/bin/env bash
# Stop the run gracefully: SIGTERM on every host; the trainer writes a checkpoint and exits. launch.sh resumes.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/config.sh"
need gcloud
pidfile="\$HOME/$REMOTE_HOME/logs/$RUN_NAME.pid"
tpu_ssh_all "if [[ -f $pidfile ]] && kill -0 \$(cat $pidfile) 2>/dev/null; then kill -TERM \$(cat $pidfile) && echo \"SIGTERM sent on \$(hostname)\"; else echo \"not running on \$(hostname)\"; fi"
