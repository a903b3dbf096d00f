#!/usr/bin/env bash
# Install the Debian packages the deployment checks need (run as root, or with sudo, on Debian 12 / bookworm):
#   podman + runc (+ uidmap, slirp4netns, fuse-overlayfs): OCI containers and the Docker API (`podman system service`);
#   debootstrap: the base root filesystem of the step image, built without any image registry;
#   docker-compose: validates docker-compose.yaml (`docker-compose config`).
# Idempotent: packages already present are skipped by apt. CI may call it before `make test-containers`.
set -euo pipefail
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends \
  podman runc uidmap slirp4netns fuse-overlayfs debootstrap docker-compose ca-certificates
