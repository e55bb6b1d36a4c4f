# shellcheck shell=bash
# Sourced by the launch scripts: --dry-run handling and shell quoting.
#
#   parse_dry_run "$@"; set -- "${ARGS[@]}"   # strips --dry-run, sets DRY_RUN
#   run CMD ARG...    # runs it; with --dry-run prints it (quoted), runs nothing

DRY_RUN=0
ARGS=()

parse_dry_run() {
  local a
  for a in "$@"; do
    if [[ $a == --dry-run ]]; then DRY_RUN=1; else ARGS+=("$a"); fi
  done
}

# One word for a POSIX shell: as is if it is plain, else single-quoted (a
# remote shell then receives a train_pattern's '*' unexpanded).
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_./=:@,+%-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# All arguments quoted and joined with spaces.
quote_all() {
  local out='' a
  for a in "$@"; do out+="${out:+ }$(quote "$a")"; done
  printf '%s' "$out"
}

run() {
  if (( DRY_RUN )); then
    printf '%s\n' "$(quote_all "$@")"
  else
    "$@"
  fi
}

# An exported variable: printed as `export K=V` in a dry run (the command
# that follows depends on it), set in this shell either way.
export_var() {
  if (( DRY_RUN )); then printf 'export %s=%s\n' "$1" "$(quote "$2")"; fi
  export "$1=$2"
}
