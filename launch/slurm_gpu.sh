#!/usr/bin/env bash
#SBATCH --job-name=vftok
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=vftok-%j.out
#SBATCH --signal=TERM@300
#SBATCH --requeue
# Multi-node GPU training under SLURM: one process per node drives its GPUs;
# --distributed makes each call jax.distributed.initialize(), which reads the
# coordinator, process count and index from SLURM's environment. SIGTERM five
# minutes before the time limit (--signal) makes every process checkpoint at
# the same step and exit; the requeued job resumes from it.
#
#   sbatch --nodes=4 launch/slurm_gpu.sh CONFIG WORKDIR [vftok.main flags...]
#   launch/slurm_gpu.sh --dry-run CONFIG WORKDIR [flags...]   # prints, runs nothing
#
# Run from the repository (sbatch copies this script elsewhere; the job works
# in $SLURM_SUBMIT_DIR, or VFTOK_DIR) with its .venv installed on shared
# storage (requirements.txt, then the CUDA build of the same JAX).
# The workdir must be shared by all nodes (NFS/Lustre, or gs:// for
# checkpoints: docs/scale_out.md, "Cloud storage").
set -euo pipefail
if [[ -n ${SLURM_SUBMIT_DIR:-} || -n ${VFTOK_DIR:-} ]]; then
  REPO=${VFTOK_DIR:-$SLURM_SUBMIT_DIR}
else
  REPO=$(cd "$(dirname "$0")/.." && pwd)
fi
# shellcheck source=launch/common.sh
source "$REPO/launch/common.sh"
parse_dry_run "$@"
set -- "${ARGS[@]}"
CONFIG=${1:?usage: slurm_gpu.sh [--dry-run] CONFIG WORKDIR [flags...]}
WORKDIR=${2:?usage: slurm_gpu.sh [--dry-run] CONFIG WORKDIR [flags...]}
shift 2
cd "$REPO"
PY=${PYTHON:-.venv/bin/python}
export_var XLA_PYTHON_CLIENT_MEM_FRACTION "${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
export_var XLA_FLAGS "${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_enable_latency_hiding_scheduler=true"
run srun --ntasks-per-node=1 --kill-on-bad-exit=1 \
  "$PY" -m vftok.main --distributed --config="$CONFIG" --workdir="$WORKDIR" "$@"
