#!/usr/bin/env bash
# Make a Docker engine reachable and build the local worker image once (offline-friendly).
#
#   scripts/docker_image.sh [IMAGE]     (default: rlm-python:local)
#
# Starts dockerd in the background when no engine answers (there is no systemd on CI
# machines), waits for it with a deadline, then builds IMAGE from a debootstrap'ed
# Debian bookworm with python3 (about a minute), unless `docker image inspect` finds it.
set -euo pipefail
IMAGE="${1:-rlm-python:local}"
DEADLINE_S="${RLM_DOCKERD_DEADLINE_S:-60}"

if ! docker info >/dev/null 2>&1; then
  echo "== starting dockerd (log: /tmp/dockerd.log)"
  nohup dockerd >/tmp/dockerd.log 2>&1 &
  end=$((SECONDS + DEADLINE_S))
  until docker info >/dev/null 2>&1; do
    if ((SECONDS >= end)); then
      echo "dockerd did not answer within ${DEADLINE_S}s; last log lines:" >&2
      tail -20 /tmp/dockerd.log >&2 || true
      exit 1
    fi
    sleep 0.5
  done
fi

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
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
tar -C "$root" -c . | docker import -c 'CMD ["python3"]' - "$IMAGE" >/dev/null
echo "== built $IMAGE"
