#!/usr/bin/env bash
# Install the package on every worker of the slice: Python $PYTHON_VERSION (via uv; TPU images ship 3.10),
# jax[tpu]==$JAX_VERSION and attractor_jax (from PACKAGE_SPEC, or a wheel built from this checkout and copied
# over); mount BUCKET with gcsfuse at GCS_MOUNT; copy DATA_GCS to LOCAL_DATA when set. Safe to rerun.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$here/config.sh"
need gcloud "install the Google Cloud CLI"

extras=${PACKAGE_EXTRAS:+[$PACKAGE_EXTRAS]}
if [[ -n "$PACKAGE_SPEC" ]]; then
  requirement="attractor_jax${extras} @ ${PACKAGE_SPEC}"
else
  need python3
  dist=$(mktemp -d)
  python3 -m pip wheel --quiet --no-deps -w "$dist" "$here/.."
  wheel=$(ls "$dist"/attractor_jax-*.whl)
  echo "copying $(basename "$wheel") to every worker"
  tpu_ssh_all "mkdir -p ~/$REMOTE_HOME"
  gcloud compute tpus tpu-vm scp "$wheel" "$TPU_NAME:~/$REMOTE_HOME/" "${GCLOUD_TPU[@]}" --worker=all
  requirement="attractor_jax${extras} @ file://\$HOME/$REMOTE_HOME/$(basename "$wheel")"
  rm -rf "$dist"
fi

bucket_name=${BUCKET#gs://}
remote=$(cat <<EOS
set -euo pipefail
mkdir -p ~/$REMOTE_HOME/logs
export PATH=\$HOME/.local/bin:\$PATH
command -v uv >/dev/null || curl -LsSf https://astral.sh/uv/install.sh | sh
[[ -x ~/$REMOTE_HOME/venv/bin/python ]] || uv venv --python $PYTHON_VERSION ~/$REMOTE_HOME/venv
uv pip install --python ~/$REMOTE_HOME/venv/bin/python --quiet "jax[tpu]==$JAX_VERSION" "$requirement"
if [[ -n "$bucket_name" ]] && ! mountpoint -q $GCS_MOUNT; then
  if ! command -v gcsfuse >/dev/null; then
    curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
    echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
    sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse
  fi
  sudo mkdir -p $GCS_MOUNT && sudo chown \$(id -u):\$(id -g) $GCS_MOUNT
  # rename-dir-limit: orbax commits a checkpoint by renaming its temporary folder (a copy on a flat bucket)
  gcsfuse --implicit-dirs --rename-dir-limit=200000 $bucket_name $GCS_MOUNT
fi
if [[ -n "$DATA_GCS" ]]; then
  mkdir -p $LOCAL_DATA && gcloud storage cp -r "$DATA_GCS" $LOCAL_DATA/
fi
~/$REMOTE_HOME/venv/bin/python -c "import jax, attractor_jax; print('worker ready: jax', jax.__version__, 'attractor_jax', attractor_jax.__version__)"
EOS
)
tpu_ssh_all "$remote"
echo "setup done on every worker of $TPU_NAME. Next: tpu/launch.sh"
