#!/usr/bin/env bash
# Prepare podman to serve the Docker API on this machine, and build the images the container tests use.
#
#   scripts/container_env.sh all          # configure + service + base + wheelhouse + image (each step is skipped when done)
#   scripts/container_env.sh configure    # containers.conf: runtime runc, lowered default_ulimits, cgroupfs
#   scripts/container_env.sh service      # podman system service on unix://$STATE/podman.sock (background)
#   scripts/container_env.sh base         # debootstrap a bookworm root filesystem with Python 3.11, podman import it
#   scripts/container_env.sh wheelhouse   # pip wheel -r requirements.txt on the host (the build may not reach PyPI)
#   scripts/container_env.sh image        # podman build --target step from the wheelhouse
#   scripts/container_env.sh airflow-image  # podman build --target airflow from the wheelhouse
#   scripts/container_env.sh mlflow-image   # podman build --target mlflow from the wheelhouse
#   scripts/container_env.sh env          # print the variables the tests read (eval "$(scripts/container_env.sh env)")
#   scripts/container_env.sh stop         # stop the service started by `service`
#
# Needs root (rootful podman) and the Debian packages of scripts/install_container_tools.sh.
# Everything lives under $MLOPS_CONTAINER_STATE (default /tmp/mlops-containers), never in the repository.
# Why the settings: crun refuses this kind of machine's hybrid cgroups (runc does not), raising ulimits above the
# host's is not permitted here, and there is no systemd to manage cgroups or take events.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
STATE="${MLOPS_CONTAINER_STATE:-/tmp/mlops-containers}"
SOCK="$STATE/podman.sock"
BASE_IMAGE="${MLOPS_BASE_IMAGE:-localhost/mlops-base:bookworm}"
STEP_IMAGE="${MLOPS_STEP_IMAGE:-localhost/mlops-step:test}"
AIRFLOW_IMAGE="${MLOPS_AIRFLOW_IMAGE:-localhost/mlops-airflow:test}"
MLFLOW_IMAGE="${MLOPS_MLFLOW_IMAGE:-localhost/mlops-mlflow:test}"
WHEELHOUSE="${MLOPS_WHEELHOUSE:-$STATE/wheelhouse}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
HOST_PYTHON="${HOST_PYTHON:-$REPO/.venv/bin/python}"
BASE_PYTHON_VERSION="${BASE_PYTHON_VERSION:-3.11.2}"
export CONTAINERS_CONF="$STATE/containers.conf"

log() { echo "[container_env $(date +%H:%M:%S)] $*" >&2; }

configure() {
  mkdir -p "$STATE"
  cat >"$CONTAINERS_CONF" <<'CONF'
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
  log "wrote $CONTAINERS_CONF"
}

service() {
  configure
  if [ -S "$SOCK" ] && [ -f "$STATE/podman.pid" ] && kill -0 "$(cat "$STATE/podman.pid")" 2>/dev/null; then
    log "service already running (pid $(cat "$STATE/podman.pid")) on unix://$SOCK"
    return
  fi
  rm -f "$SOCK"
  nohup podman system service --time=0 "unix://$SOCK" >"$STATE/podman-service.log" 2>&1 &
  echo $! >"$STATE/podman.pid"
  for _ in $(seq 1 50); do
    [ -S "$SOCK" ] && { log "service pid $(cat "$STATE/podman.pid") on unix://$SOCK"; return; }
    sleep 0.2
  done
  log "podman system service did not create $SOCK; see $STATE/podman-service.log"
  exit 1
}

drop_rootfs() {  # an interrupted debootstrap can leave proc/sys mounted inside the root filesystem
  local m
  for m in proc sys dev/pts dev; do umount "$1/$m" 2>/dev/null || true; done
  rm -rf --one-file-system "$1"
}

base() {
  configure
  if podman image exists "$BASE_IMAGE"; then log "base image $BASE_IMAGE exists"; return; fi
  local rootfs="$STATE/rootfs"
  drop_rootfs "$rootfs"
  log "debootstrap bookworm into $rootfs (about a minute)"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$rootfs" "$DEBIAN_MIRROR" \
    >"$STATE/debootstrap.log" 2>&1 || { tail -20 "$STATE/debootstrap.log" >&2; exit 1; }
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | podman import --change 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
  drop_rootfs "$rootfs"
  log "imported $BASE_IMAGE"
}

# Beyond requirements.txt, the airflow and mlflow targets install these; keep in step with the Dockerfile's
# PIP_VERSION and PSYCOPG2_VERSION build args.
EXTRA_WHEELS=(pip==26.3 psycopg2-binary==2.9.13 "mlflow[auth]")

wheelhouse() {
  local stamp="$WHEELHOUSE/.requirements.sha256"
  local want
  want="$( (cat "$REPO/requirements.txt"; echo "${EXTRA_WHEELS[*]}") | sha256sum | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then log "wheelhouse $WHEELHOUSE is current"; return; fi
  mkdir -p "$WHEELHOUSE"
  log "pip wheel -r requirements.txt -> $WHEELHOUSE (minutes; torch must resolve to the CPU wheel on this host)"
  "$HOST_PYTHON" -m pip wheel -q -r "$REPO/requirements.txt" "${EXTRA_WHEELS[@]}" -w "$WHEELHOUSE"
  # The base image's Python (Debian bookworm: 3.11.2) can be older than the host's; some releases need >= 3.11.5.
  # Resolve once more for that interpreter so the wheelhouse also holds the versions it accepts.
  "$HOST_PYTHON" -m pip download -q -r "$REPO/requirements.txt" "${EXTRA_WHEELS[@]}" -d "$WHEELHOUSE" \
    --find-links "$WHEELHOUSE" --only-binary=:all: --python-version "$BASE_PYTHON_VERSION" --implementation cp \
    --abi cp311 --abi abi3 --abi none --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform linux_x86_64
  echo "$want" >"$stamp"
  log "wheelhouse: $(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels, $(du -sh "$WHEELHOUSE" | cut -f1)"
}

build() {  # build TARGET TAG
  configure
  log "podman build --target $1 -t $2 (cached layers are reused)"
  # The wheelhouse is mounted into the RUN steps only; PIP_NO_INDEX/PIP_FIND_LINKS are build args, so they
  # do not end up in the image's environment.
  podman build --target "$1" -t "$2" \
    --build-arg BASE_IMAGE="$BASE_IMAGE" \
    --build-arg PIP_NO_INDEX=1 --build-arg PIP_FIND_LINKS=/wheels \
    --volume "$WHEELHOUSE:/wheels:ro" \
    --network host \
    -f "$REPO/Dockerfile" "$REPO"
}

stop() {
  if [ -f "$STATE/podman.pid" ]; then
    kill "$(cat "$STATE/podman.pid")" 2>/dev/null || true
    rm -f "$STATE/podman.pid" "$SOCK"
    log "service stopped"
  fi
}

env_vars() {
  echo "export CONTAINERS_CONF=$CONTAINERS_CONF"
  echo "export MLOPS_TEST_DOCKER_URL=unix://$SOCK"
  echo "export MLOPS_TEST_STEP_IMAGE=$STEP_IMAGE"
}

case "${1:-all}" in
  configure) configure ;;
  service) service ;;
  base) base ;;
  wheelhouse) wheelhouse ;;
  image) build step "$STEP_IMAGE" ;;
  airflow-image) build airflow "$AIRFLOW_IMAGE" ;;
  mlflow-image) build mlflow "$MLFLOW_IMAGE" ;;
  env) env_vars ;;
  stop) stop ;;
  all) configure; service; base; wheelhouse; build step "$STEP_IMAGE"; env_vars ;;
  *) echo "usage: $0 [all|configure|service|base|wheelhouse|image|airflow-image|mlflow-image|env|stop]" >&2; exit 2 ;;
esac
