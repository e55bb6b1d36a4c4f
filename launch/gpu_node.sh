#!/usr/bin/env bash
# Runs a config on one GPU node: one process drives all local GPUs (the mesh
# spans them), which is also the single-GPU debugging setup.
#
#   launch/gpu_node.sh [--dry-run] CONFIG WORKDIR [vftok.main flags...]
#   launch/gpu_node.sh configs/tokenizer_k600.py /runs/k600 --config.mesh.fsdp=8
#
# --dry-run prints the environment and the command, and runs nothing.
# Several nodes: launch/slurm_gpu.sh (one process per node, --distributed).
set -euo pipefail
# shellcheck source=launch/common.sh
source "$(dirname "$0")/common.sh"
parse_dry_run "$@"
set -- "${ARGS[@]}"
CONFIG=${1:?usage: gpu_node.sh [--dry-run] CONFIG WORKDIR [flags...]}
WORKDIR=${2:?usage: gpu_node.sh [--dry-run] CONFIG WORKDIR [flags...]}
shift 2
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
# Keep 10% of GPU memory for cuDNN workspaces etc.; let XLA overlap
# collectives with compute.
export_var XLA_PYTHON_CLIENT_MEM_FRACTION "${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
export_var XLA_FLAGS "${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_enable_latency_hiding_scheduler=true"
run "$PY" -m vftok.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
