#!/usr/bin/env bash
# `make image`: build the image for real wherever a Docker engine answers.
# 1. No engine answers: as root, install Debian's docker.io if it is missing and start dockerd
#    (host networking only: no bridge, no iptables rules; it keeps running, log in
#    .run/dockerd.log); otherwise lint the Dockerfile only and say why (exit 0).
# 2. Base images: the official ones (Dockerfile defaults) when present or pullable; otherwise,
#    where no registry is reachable, the local equivalents (scripts/image/local-bases.sh).
# 3. docker build with BuildKit (RUN --mount) on the host network (RUN steps reach PyPI even when
#    the engine runs without a bridge), then report the image size and the build time.
set -euo pipefail
cd "$(dirname "$0")/../.."

IMAGE=${IMAGE:-celery-stack:dev}
PYTHON_IMAGE=${PYTHON_IMAGE:-python:3.11-slim-bookworm}
UV_IMAGE=${UV_IMAGE:-ghcr.io/astral-sh/uv:0.13.9}
# Debian's docker.io client (20.10) builds with its built-in BuildKit; a newer CLI needs buildx.
if [ -z "${DOCKER:-}" ]; then
    if [ -x /usr/bin/docker ]; then DOCKER=/usr/bin/docker; else DOCKER=docker; fi
fi
export DOCKER DOCKER_BUILDKIT=1

answers() { command -v "$DOCKER" >/dev/null 2>&1 && timeout 20 $DOCKER info >/dev/null 2>&1; }
start_engine() {
    if ! command -v dockerd >/dev/null 2>&1; then
        command -v apt-get >/dev/null 2>&1 || return 1
        echo "image: no Docker engine here: installing Debian's docker.io"
        apt-get update -q >/dev/null && apt-get install -y -q docker.io >/dev/null || return 1
        DOCKER=/usr/bin/docker
    fi
    echo "image: starting dockerd (host network only; log .run/dockerd.log)"
    mkdir -p .run
    setsid dockerd --bridge=none --iptables=false --ip6tables=false >.run/dockerd.log 2>&1 &
    for _ in $(seq 60); do answers && return 0; sleep 1; done
    return 1
}
if ! answers; then
    if [ "$(id -u)" != 0 ] || ! start_engine; then
        echo "image: no Docker engine answers here and none can be started (needs root and" \
            "docker.io); Dockerfile linted (hadolint), build skipped"
        exit 0
    fi
fi

available() {
    $DOCKER image inspect "$1" >/dev/null 2>&1 || timeout 60 $DOCKER pull -q "$1" >/dev/null 2>&1
}
if ! available "$PYTHON_IMAGE" || ! available "$UV_IMAGE"; then
    echo "image: $PYTHON_IMAGE / $UV_IMAGE cannot be pulled (no registry): building local bases"
    bases_started=$(date +%s)
    eval "$(scripts/image/local-bases.sh)"
    echo "image: local bases $PYTHON_IMAGE + $UV_IMAGE ready in $(( $(date +%s) - bases_started ))s"
fi

# The host's CA bundle as a build secret: uv inside the build reaches PyPI through the same
# (possibly TLS-intercepting) path as the host. Never stored in a layer.
secret=()
ca=${SSL_CERT_FILE:-${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}}
if [ -s "$ca" ]; then secret=(--secret "id=ca-bundle,src=$ca"); fi

started=$(date +%s)
$DOCKER build --network host "${secret[@]}" \
    --build-arg "PYTHON_IMAGE=$PYTHON_IMAGE" --build-arg "UV_IMAGE=$UV_IMAGE" \
    -t "$IMAGE" .
took=$(( $(date +%s) - started ))
size=$($DOCKER image inspect --format '{{.Size}}' "$IMAGE")
echo "image: $IMAGE built in ${took}s from $PYTHON_IMAGE + $UV_IMAGE; size $((size / 1024 / 1024)) MiB ($size bytes)"
