#!/usr/bin/env bash
# Runs a config on every host of a Cloud TPU pod slice (one process per host).
#
#   TPU_NAME=my-v5p-256 ZONE=us-east5-a \
#     launch/tpu_pod.sh [--dry-run] configs/tokenizer_k600.py gs://bucket/runs/k600 \
#       --config.data.train_pattern='/mnt/k600-latents/train-*.array_record'
#
# --dry-run prints every command (the gcloud calls with the script each host
# runs) and runs nothing. Expects the repo checked out at ~/vftok on every
# host (REMOTE_DIR, relative to the home directory), e.g. via a prior
#   gcloud compute tpus tpu-vm ssh $TPU_NAME --worker=all --command 'git clone ... vftok'
# Data: ArrayRecord files are read by local path, so a bucket must be
# mounted on every host (gcsfuse); the workdir may be gs:// (checkpoints and
# TensorBoard go to the bucket; docs/scale_out.md, "Cloud storage").
#
# First run on a host: a venv with only what a TPU host needs, the core
# requirements (no torch, no test packages) with the TPU build of the pinned
# JAX (jax[tpu] pulls the libtpu that matches it), resolved by pip for the
# host's own Python (PYTHON, default python3; >= 3.11, as vftok); set
# JAX_VERSION to take another JAX release. Every host then runs the same
# command; --distributed makes each call jax.distributed.initialize(), which
# finds the coordinator in the TPU metadata. A maintenance event's SIGTERM
# makes every host checkpoint at one step and exit; rerunning resumes.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=launch/common.sh
source "$HERE/common.sh"
parse_dry_run "$@"
set -- "${ARGS[@]}"
CONFIG=${1:?usage: tpu_pod.sh [--dry-run] CONFIG WORKDIR [flags...]}
WORKDIR=${2:?usage: tpu_pod.sh [--dry-run] CONFIG WORKDIR [flags...]}
shift 2
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
REMOTE_DIR=${REMOTE_DIR:-vftok}
REMOTE_PY=${PYTHON:-python3}
JAX_VERSION=${JAX_VERSION:-$(sed -n 's/^jax==//p' "$HERE/../requirements.txt")}

# Run on each host, from its home directory.
SETUP="cd $(quote "$REMOTE_DIR") && \
$(quote "$REMOTE_PY") -c 'import sys; sys.exit(sys.version_info < (3, 11) and \"vftok needs Python >= 3.11, this host has \" + sys.version.split()[0] + \": set PYTHON\")' && \
(test -x .venv/bin/python || ( \
$(quote "$REMOTE_PY") -m venv .venv && \
grep -vE '^(jax|jaxlib)==' requirements.txt > .venv/core-requirements.txt && \
.venv/bin/pip install -q $(quote "jax[tpu]==$JAX_VERSION") -r .venv/core-requirements.txt && \
.venv/bin/pip install -q --no-deps -e .))"
TRAIN="cd $(quote "$REMOTE_DIR") && .venv/bin/python -m vftok.main --distributed \
$(quote_all --config="$CONFIG" --workdir="$WORKDIR" "$@")"

for script in "$SETUP" "$TRAIN"; do
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all \
    --command "$script"
done
