# Sourced by the CPU study scripts: run_commands CMD...: prints every command, then, unless
# PRINT_ONLY is set, runs them in order (each stamped with the time; the first failure stops).
run_commands() {
  printf '%s\n' "$@"
  [[ -n "${PRINT_ONLY:-}" ]] && return 0
  local c
  for c in "$@"; do
    echo "[$(date -u +%H:%M:%S)] $c"
    eval "$c"
  done
}
