#!/usr/bin/env bash
# Run a long command and say that it is still running every 30 s, so that a build or a
# download that prints nothing for minutes (pip building llama-cpp-python) is not mistaken
# for a hang. Usage: scripts/with_progress.sh "what it is doing" command [args...]
set -uo pipefail
what=$1; shift
echo "== $what (started $(date +%H:%M:%S))" >&2
"$@" &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; exit 130' INT TERM
start=$SECONDS
while kill -0 "$pid" 2>/dev/null; do
  for _ in $(seq 30); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 1
  done
  if kill -0 "$pid" 2>/dev/null; then
    elapsed=$((SECONDS - start))
    printf '   ... still %s (%dm%02ds so far)\n' "$what" $((elapsed / 60)) $((elapsed % 60)) >&2
  fi
done
wait "$pid"
rc=$?
elapsed=$((SECONDS - start))
if [ "$rc" -eq 0 ]; then
  printf '== done: %s (%dm%02ds)\n' "$what" $((elapsed / 60)) $((elapsed % 60)) >&2
else
  printf '== FAILED (exit %d): %s\n' "$rc" "$what" >&2
fi
exit "$rc"
