#!/usr/bin/env bash
# Make a Docker engine reachable and build the local worker image once (offline-friendly).
#
#   scripts/docker_image.sh [IMAGE]     (default: rlm-python:local)
#
# Talks to the engine through the Docker SDK for Python (pip install "rlm[docker]"), as
# environment="docker" does, so no docker command is needed; DOCKER_HOST and contexts
# are honoured. Starts dockerd in the background when no engine answers (there is no
# systemd on CI machines), waits for it with a deadline, then builds IMAGE from a
# debootstrap'ed Debian bookworm with python3 (about a minute), unless the engine has it.
set -euo pipefail
IMAGE="${1:-rlm-python:local}"
DEADLINE_S="${RLM_DOCKERD_DEADLINE_S:-60}"
PY="${PYTHON:-python3}"

# The program goes in with -c: a here-document on the python command would take the place
# of its stdin, which `engine import` reads the image's tar from.
ENGINE_PY="$(cat <<'PYEOF'
import sys
import docker

op = sys.argv[1]
try:
    client = docker.from_env(timeout=30)
except docker.errors.DockerException:
    sys.exit(1)
api = client.api
if op == "has":  # an empty image (an import that got no tar) counts as missing
    try:
        sys.exit(0 if api.inspect_image(sys.argv[2]).get("Size") else 1)
    except docker.errors.ImageNotFound:
        sys.exit(1)
elif op == "import":
    repo, tag = docker.utils.parse_repository_tag(sys.argv[2])
    api.import_image_from_stream(
        sys.stdin.buffer, repository=repo, tag=tag or "latest", changes=['CMD ["python3"]']
    )
    if not api.inspect_image(sys.argv[2]).get("Size"):
        sys.exit(f"the imported image {sys.argv[2]} is empty")
PYEOF
)"

engine() {  # engine ping | engine has IMAGE | engine import IMAGE (tar on stdin)
  "$PY" -c "$ENGINE_PY" "$@"
}

if ! "$PY" -c "import docker" 2>/dev/null; then
  echo 'the Docker SDK for Python is missing: pip install "rlm[docker]"' >&2
  exit 1
fi

if ! engine ping; then
  echo "== starting dockerd (log: /tmp/dockerd.log)"
  nohup dockerd >/tmp/dockerd.log 2>&1 &
  end=$((SECONDS + DEADLINE_S))
  until engine ping; do
    if ((SECONDS >= end)); then
      echo "dockerd did not answer within ${DEADLINE_S}s; last log lines:" >&2
      tail -20 /tmp/dockerd.log >&2 || true
      exit 1
    fi
    sleep 0.5
  done
fi

if engine has "$IMAGE"; then
  echo "== image $IMAGE already built"
  exit 0
fi

echo "== building $IMAGE with debootstrap (minbase + python3)"
root="$(mktemp -d /tmp/rlm-rootfs.XXXXXX)"
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3 bookworm "$root" >/tmp/debootstrap.log 2>&1 || {
  tail -20 /tmp/debootstrap.log >&2
  exit 1
}
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | engine import "$IMAGE"
echo "== built $IMAGE"
