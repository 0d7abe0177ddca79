#!/usr/bin/env bash
# The containment suite's second pass: bubblewrap hidden (/dev/null bind-mounted over it in
# a private mount namespace, so the host's own view is untouched). `subprocess` must then
# still contain every attack through its unshare launcher, or refuse to start.
set -euo pipefail
cd "$(dirname "$0")/.."
bwrap_path="$(command -v bwrap || true)"
exec unshare --mount --propagation private -- bash -c '
  set -euo pipefail
  if [ -n "$1" ]; then mount --bind /dev/null "$1"; fi
  if bwrap --version >/dev/null 2>&1; then echo "bubblewrap still runs" >&2; exit 1; fi
  RLM_CONTAINMENT_PASS=no-bwrap exec python3 -m pytest -q tests/test_containment.py "${@:2}"
' containment "$bwrap_path" "$@"
