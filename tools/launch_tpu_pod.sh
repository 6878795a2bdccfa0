#!/usr/bin/env bash
# Create a Cloud TPU VM pod slice, install bigbatch on every worker, and run the
# same `bigbatch train` command on all of them (one JAX process per worker).
#
# usage: tools/launch_tpu_pod.sh NAME ZONE ACCELERATOR_TYPE CONFIG WORKDIR [--config.FIELD=VALUE ...]
#   e.g. tools/launch_tpu_pod.sh bb-v4 us-central2-b v4-64 \
#          configs/imagenet_resnet50_8192_16384.py /mnt/shared/runs/r50 \
#          --config.dataset.data_dir=/mnt/shared/tensorflow_datasets
#
# WORKDIR must be one directory that every worker sees (an NFS or Filestore
# mount, or a gcsfuse-mounted bucket): orbax writes one checkpoint from all.
#
# Environment: TPU_VERSION (software version, default tpu-ubuntu2204-base),
# REPO (git URL of bigbatch, default: this clone's origin), REF (default: HEAD),
# SKIP_CREATE=1 to reuse an existing slice, PREEMPTIBLE=1 for a spot slice.
#
# On a pod slice, `distributed.enabled: auto` sees TPU_WORKER_HOSTNAMES and calls
# jax.distributed.initialize(); each worker reads its own part of every batch.
# A preempted slice gets SIGTERM: bigbatch saves a checkpoint and exits 0; run
# this script again with SKIP_CREATE=1 (or on a new slice) and it resumes.
set -euo pipefail

if [[ $# -lt 5 ]]; then
  sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
name=$1 zone=$2 accelerator=$3 config=$4 workdir=$5
shift 5
overrides=("$@")
version=${TPU_VERSION:-tpu-ubuntu2204-base}
repo=${REPO:-$(git config --get remote.origin.url)}
ref=${REF:-$(git rev-parse HEAD)}

if [[ -z "${SKIP_CREATE:-}" ]]; then
  gcloud compute tpus tpu-vm create "$name" --zone="$zone" \
    --accelerator-type="$accelerator" --version="$version" \
    ${PREEMPTIBLE:+--spot}
fi

quoted=""
if [[ ${#overrides[@]} -gt 0 ]]; then
  quoted=$(printf ' %q' "${overrides[@]}")
fi
gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="
  set -e
  if [ ! -d bigbatch ]; then git clone $repo bigbatch; fi
  cd bigbatch && git fetch -q origin && git checkout -q $ref
  python3 -m venv .venv && . .venv/bin/activate
  pip install -q -c constraints.txt -e . 'jax[tpu]'
  bigbatch train --config $config --workdir $workdir --noprogress$quoted
"
