#!/usr/bin/env bash
# Create a Cloud TPU VM pod slice, install bigbatch on every worker, and run the
# same `bigbatch train` command on all of them (one JAX process per worker).
#
# usage: tools/launch_tpu_pod.sh NAME ZONE ACCELERATOR_TYPE CONFIG WORKDIR [--config.FIELD=VALUE ...]
#   e.g. tools/launch_tpu_pod.sh bb-v4 us-central2-b v4-64 \
#          configs/imagenet_resnet50_8192_16384.py /mnt/shared/runs/r50 \
#          --config.dataset.data_dir=/mnt/shared/tensorflow_datasets
#   each phase on its slice: SLICES="4=v4-8 8=v4-16 16=v4-32" tools/launch_tpu_pod.sh ...
#
# WORKDIR must be one directory that every worker sees (an NFS or Filestore
# mount, or a gcsfuse-mounted bucket): orbax writes one checkpoint from all.
#
# Environment: TPU_VERSION (software version, default tpu-ubuntu2204-base),
# REPO (git URL of bigbatch, default: this clone's origin), REF (default: HEAD),
# SKIP_CREATE=1 to reuse an existing slice, PREEMPTIBLE=1 for a spot slice,
# REMOTE_SETUP (what each worker runs before `bigbatch train`; default: clone
# REPO at REF into ~/bigbatch, make a venv, install with constraints.txt and jax[tpu]).
#
# SLICES: the slices a run may move between, as DEVICES=ACCELERATOR_TYPE pairs
# (DEVICES: JAX's device count on that slice, as `elastic.slice_sizes` counts them).
# With SLICES set, the run starts on ACCELERATOR_TYPE with --until_phase_end;
# each time it stops at a phase end wanting N devices (exit 75), the slice is
# deleted and the one SLICES gives for N is created under the same NAME, and the
# same command resumes there from the phase-end checkpoint.
#
# On a pod slice, `distributed.enabled: auto` sees TPU_WORKER_HOSTNAMES and calls
# jax.distributed.initialize(); each worker reads its own part of every batch.
# A preempted slice gets SIGTERM: bigbatch saves a checkpoint and exits 0; run
# this script again with SKIP_CREATE=1 (or on a new slice) and it resumes.
set -euo pipefail

if [[ $# -lt 5 ]]; then
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
name=$1 zone=$2 accelerator=$3 config=$4 workdir=$5
shift 5
overrides=("$@")
version=${TPU_VERSION:-tpu-ubuntu2204-base}
if [[ -n ${REMOTE_SETUP:-} ]]; then
  setup=$REMOTE_SETUP
else
  repo=${REPO:-$(git config --get remote.origin.url || true)}
  ref=${REF:-$(git rev-parse HEAD)}
  if [[ -z $repo ]]; then
    echo "launch_tpu_pod.sh: REPO: this clone has no origin; set REPO to bigbatch's git URL" >&2
    exit 2
  fi
  setup="if [ ! -d bigbatch ]; then git clone $repo bigbatch; fi
  cd bigbatch && git fetch -q origin && git checkout -q $ref
  python3 -m venv .venv && . .venv/bin/activate
  pip install -q -c constraints.txt -e . 'jax[tpu]'"
fi

# SLICES, read and checked before anything is created: devices -> accelerator type
declare -A slice_of=()
for pair in ${SLICES:-}; do
  if [[ ! $pair =~ ^[1-9][0-9]*=[A-Za-z0-9_.-]+$ ]]; then
    echo "launch_tpu_pod.sh: SLICES: '$pair' is not DEVICES=ACCELERATOR_TYPE (e.g. 8=v4-16)" >&2
    exit 2
  fi
  slice_of[${pair%%=*}]=${pair#*=}
done

flags=" --noprogress"
if [[ -n ${SLICES:-} ]]; then
  flags+=" --until_phase_end"
fi
if [[ ${#overrides[@]} -gt 0 ]]; then
  flags+=$(printf ' %q' "${overrides[@]}")
fi

create() {
  gcloud compute tpus tpu-vm create "$name" --zone="$zone" \
    --accelerator-type="$1" --version="$version" \
    ${PREEMPTIBLE:+--spot}
}

if [[ -z "${SKIP_CREATE:-}" ]]; then
  create "$accelerator"
fi
while true; do
  output=$(mktemp)
  status=0
  gcloud compute tpus tpu-vm ssh "$name" --zone="$zone" --worker=all --command="
    set -e
    $setup
    bigbatch train --config $config --workdir $workdir$flags
  " 2>&1 | tee "$output" || status=${PIPESTATUS[0]}
  # bigbatch train's one line at a phase end: "... wants N devices, this run has M: ..."
  wanted=$(sed -n 's/^.*bigbatch train: phase [0-9]* (batch [0-9,]*) wants \([0-9]*\) devices.*$/\1/p' \
    "$output" | head -n 1)
  rm -f "$output"
  if [[ -z ${SLICES:-} || -z $wanted ]]; then
    exit "$status"
  fi
  next=${slice_of[$wanted]:-}
  if [[ -z $next ]]; then
    echo "launch_tpu_pod.sh: the next phase wants $wanted devices and SLICES has no slice" \
      "of $wanted (SLICES=$SLICES); the run is checkpointed in $workdir" >&2
    exit 75
  fi
  echo "launch_tpu_pod.sh: moving to $next ($wanted devices)" >&2
  gcloud compute tpus tpu-vm delete "$name" --zone="$zone" --quiet
  accelerator=$next
  create "$accelerator"
done
