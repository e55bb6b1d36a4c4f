#!/usr/bin/env bash
# Runs a config on every host of a Cloud TPU pod slice (one process per host).
#
#   TPU_NAME=my-v5p-256 ZONE=us-east5-a \
#     launch/tpu_pod.sh configs/tokenizer_k600.py gs://bucket/runs/k600 \
#       --config.data.train_pattern='gs://bucket/k600-latents/train-*.array_record'
#
# Expects the repo checked out at ~/vftok on every host (e.g. via a prior
# `gcloud ... ssh --worker=all --command "git clone ..."`). Every host runs the
# same command; --distributed makes each call jax.distributed.initialize(),
# which discovers the coordinator from the TPU metadata. A SIGTERM from a
# maintenance event makes every host write a checkpoint and exit; rerunning
# this script resumes from it.
set -euo pipefail
CONFIG=${1:?config file}; WORKDIR=${2:?workdir}; shift 2
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}"
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  cd ~/vftok &&
  (test -x .venv/bin/python || (python3 -m venv .venv && .venv/bin/pip install -q -r requirements.txt -e . && .venv/bin/pip install -q 'jax[tpu]==$(grep '^jax==' requirements.txt | cut -d= -f3)')) &&
  .venv/bin/python -m vftok.main --distributed --config=$CONFIG --workdir=$WORKDIR $*"
