#!/usr/bin/env bash
# Device check for one GPU (H100/H200), within 10 minutes:
#   1. installs what the image lacks, keeping the image's (CUDA) jax;
#   2. runs the attention-kernel equality tests compiled on the GPU
#      (tests/test_attention_kernels.py with VFTOK_KERNELS_ON_DEVICE=1);
#   3. train-step benchmarks (tokenizer stage 1 and 2, XLA vs the fused
#      kernels) for d12-d12 and d18-d18 K600 at the largest per-device batch
#      that fits, then tokenize / detokenize speed;
#   4. writes one markdown file of result tables: $OUT/device_check.md.
#
#   bash benchmarks/device_check.sh [OUTPUT_DIR]     (default: $OUT, else .)
#
# Every step has its own time limit and the script stops starting steps near
# the overall budget (BUDGET_S, default 570 s), so what ran is always written.
# PYTHON (default python3) is the interpreter every step runs.
#
# Exit status: 0 only if every step ran and exited 0. A benchmark exits
# non-zero when any of its rows failed (out of memory, a kernel failing, a
# requested kernel the model cannot build: benchmarks/outcomes.py), the
# kernel tests when one fails, a step cut off by its time limit with 124 or
# 137. Steps not started because the budget was spent also fail the check.
# The report lists every step's exit status, the failed or not-run steps and
# the benchmarks' failed rows; the log's last line says the same.
#
# No `set -e`: a failing step must not stop the later ones (each step's
# status is read from $? of its one command, not from a pipeline).
set -uo pipefail

cd "$(dirname "$0")/.." || exit 1
OUT_DIR="${1:-${OUT:-.}}"
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/device_check.log"
TRAIN_MD="$OUT_DIR/train_rows.md"
INFER_MD="$OUT_DIR/inference_rows.md"
REPORT="$OUT_DIR/device_check.md"
BUDGET_S="${BUDGET_S:-570}"
PY="${PYTHON:-python3}"
: > "$LOG"
: > "$TRAIN_MD"
: > "$INFER_MD"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# Let XLA take most of the GPU (the batch search reads its bytes_limit).
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"

log() { echo "[$(date +%T) +${SECONDS}s] $*" | tee -a "$LOG"; }

# Each step's outcome: "| name | exit status | seconds |" rows for the
# report, and the names of the steps that failed or did not run.
RUNS=()
FAILED=()
NOT_RUN=()

# join ITEM...: the items separated by ", " (none: "none").
join() {
  local out="" x
  for x in "$@"; do out+="${out:+, }$x"; done
  echo "${out:-none}"
}

# step LIMIT_S NAME CMD...: runs CMD with a time limit unless the budget is
# nearly spent; its output goes to the log, its exit status to RUNS (and
# FAILED when not 0). Returns 0 either way: the next step still runs.
step() {
  local limit=$1 name=$2
  shift 2
  local left=$((BUDGET_S - SECONDS))
  if ((left < 30)); then
    log "SKIP $name: budget spent"
    RUNS+=("| $name | not run (budget spent) | |")
    NOT_RUN+=("$name")
    return 0
  fi
  ((limit > left)) && limit=$left
  log "START $name (limit ${limit}s)"
  local t0=$SECONDS rc=0
  timeout --signal=TERM --kill-after=10 "$limit" "$@" >> "$LOG" 2>&1 || rc=$?
  local what=$rc
  ((rc == 124 || rc == 137)) && what="$rc (time limit ${limit}s)"
  log "END $name rc=$rc"
  RUNS+=("| $name | $what | $((SECONDS - t0)) |")
  ((rc != 0)) && FAILED+=("$name (rc=$rc)")
  return 0
}

install() {
  # The image's jax stays: requirements.txt pins the CPU jax, so install the
  # rest of what the benchmarks and tests import with jax held at the
  # installed version, and vftok itself without dependencies.
  # Any command failing fails the step (its status is the function's).
  if ! "$PY" -c 'import jax' 2>/dev/null; then
    "$PY" -m pip install -q 'jax[cuda12]' || return
  fi
  local cons
  cons="$(mktemp)" || return
  "$PY" -m pip freeze | grep -iE '^(jax|jaxlib|jax-cuda[0-9]+-[a-z]+|jax_cuda[0-9]+_[a-z]+)==' \
    > "$cons" || return
  grep -iE '^(flax|optax|orbax-checkpoint|einops|ml-collections|absl-py|pyyaml|safetensors|chex|numpy)==' \
    requirements.txt | sed 's/==.*//' > "$OUT_DIR/wanted.txt" || return
  "$PY" -m pip install -q -c "$cons" -r "$OUT_DIR/wanted.txt" pytest || return
  "$PY" -m pip install -q --no-deps -e . || return
  rm -f "$cons"
  "$PY" -c 'import jax; print("jax", jax.__version__, jax.devices())'
}

log "output: $OUT_DIR"
export PY OUT_DIR
export -f install
step 150 install bash -c install
"$PY" -m pip list 2>/dev/null | grep -iE '^(jax|flax)' >> "$LOG"
nvidia-smi --query-gpu=name,memory.total --format=csv >> "$LOG" 2>&1 || true

# conftest.py forces the CPU for the CI suite: --noconftest keeps the GPU.
step 90 kernel-tests env VFTOK_KERNELS_ON_DEVICE=1 \
  "$PY" -m pytest -q --noconftest -p no:cacheprovider tests/test_attention_kernels.py

BENCH=("$PY" benchmarks/bench_train_step.py --remat=dots --steps=5
  --per_device_batch=0 --markdown="$TRAIN_MD")
# Most important first: what runs out of budget is the last steps.
step 200 train-d18 "${BENCH[@]}" --config=configs/tokenizer_k600.py \
  --stages=1,2 --attention_impl=xla,pallas_gpu
step 80 inference-d18 "$PY" benchmarks/bench_inference.py \
  --config=configs/tokenizer_k600.py --batch=8 --steps=2 --repeats=2 \
  --dtype=bfloat16 --attention_impl=xla,pallas_gpu --markdown="$INFER_MD"
step 100 train-d12 "${BENCH[@]}" --config=configs/tokenizer_d12.py \
  --stages=1 --attention_impl=xla,pallas_gpu
step 60 train-ar-d12 "$PY" benchmarks/bench_train_step.py --remat=dots \
  --steps=5 --per_device_batch=8 --markdown="$TRAIN_MD" \
  --config=configs/ar_c2v_k600.py:12

# A markdown table from rows appended run by run: its header (the first line
# matching $2) and separator once, then every data row.
table() {
  grep -h "$2" "$1" | head -n 1
  grep -h '^|---' "$1" | head -n 1
  grep -h '^| ' "$1" | grep -v -e "$2" -e '^|---' || true
}

# One report: the train-step rows under one header, then inference.
{
  echo "# vftok device check ($(date -u +%F))"
  echo
  grep -m1 -h 'jax ' "$LOG" || true
  echo
  echo "## Train step (per device)"
  echo
  table "$TRAIN_MD" '^| run '
  echo
  echo "## Inference"
  echo
  table "$INFER_MD" '^| model '
  echo
  echo "## Kernel tests"
  echo
  sed -n '/START kernel-tests/,/END kernel-tests/p' "$LOG" \
    | grep -E '^(FAILED|ERROR) |[0-9]+ (passed|failed|error)' | tail -n 5 || true
  echo
  echo "## Runs"
  echo
  echo "| step | exit status | seconds |"
  echo "|---|---|---|"
  printf '%s\n' "${RUNS[@]}"
  echo
  echo "Failed runs: $(join "${FAILED[@]}")"
  echo
  echo "Not run (budget spent): $(join "${NOT_RUN[@]}")"
  echo
  echo "Skipped or failed benchmark rows and tests:"
  grep -E '(skipped|failed): |rows (skipped|failed)|^FAILED' "$LOG" || echo "none"
} > "$REPORT"
log "wrote $REPORT"
cat "$REPORT"
if ((${#FAILED[@]} + ${#NOT_RUN[@]})); then
  log "device check FAILED: ${#FAILED[@]} of ${#RUNS[@]} steps failed:" \
    "$(join "${FAILED[@]}"); not run: $(join "${NOT_RUN[@]}")"
  exit 1
fi
log "device check passed: all ${#RUNS[@]} steps exited 0"
