#!/usr/bin/env bash
# Runs a config on one multi-GPU node: one process drives all local GPUs
# (the mesh spans them), which is also the single-GPU debugging setup.
#
#   launch/gpu_node.sh configs/tokenizer_k600.py /runs/k600 --config.mesh.fsdp=8
#
# For several nodes (SLURM), start one process per node with
#   srun python -m vftok.main --distributed --config=... --workdir=...
# (jax.distributed.initialize() reads the SLURM environment).
set -euo pipefail
CONFIG=${1:?config file}; WORKDIR=${2:?workdir}; shift 2
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
# Let XLA overlap collectives with compute; keep 10% of memory for cuDNN etc.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"
exec "$PY" -m vftok.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
