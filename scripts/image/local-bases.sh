#!/usr/bin/env bash
# Local base images for the Dockerfile where no image registry is reachable (`make image` calls
# this only then). Same roles as the official images the Dockerfile defaults to:
#   PYTHON_IMAGE  Debian bookworm (debootstrap --variant=minbase) + Debian's python3 (3.11)
#   UV_IMAGE      just /uv, the binary of the uv wheel from PyPI (the version pinned below)
# Needs root, debootstrap, a Debian mirror and a Docker engine. Idempotent: an existing tag is
# kept unless FORCE=1. Prints the two image names as build-arg lines on stdout.
set -euo pipefail

PYTHON_IMAGE_LOCAL=${PYTHON_IMAGE_LOCAL:-celery-stack-local/python:3.11-bookworm}
UV_VERSION=${UV_VERSION:-0.13.9}
UV_IMAGE_LOCAL=${UV_IMAGE_LOCAL:-celery-stack-local/uv:${UV_VERSION}}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DOCKER=${DOCKER:-docker}
FORCE=${FORCE:-0}

have() { [ "$FORCE" != 1 ] && $DOCKER image inspect "$1" >/dev/null 2>&1; }
work=$(mktemp -d /tmp/celery-stack-bases.XXXXXX)
trap 'rm -rf "$work"' EXIT

# `pip download` from the first Python that has pip. Under `uv run` the first python3 on PATH is
# the workspace's venv, which has none (a bare machine's CI failed on exactly that); the last
# resort is a throwaway venv seeded with pip by uv, which `make` has installed in any case.
pip_download() {
    local py
    for py in /usr/bin/python3 python3; do
        if "$py" -m pip --version >/dev/null 2>&1; then
            "$py" -m pip download "$@"
            return
        fi
    done
    local uv=${UV:-$(command -v uv || echo .tools/bin/uv)}
    "$uv" venv --quiet --seed "$work/pip-venv" >&2
    "$work/pip-venv/bin/python" -m pip download "$@"
}

if ! have "$PYTHON_IMAGE_LOCAL"; then
    command -v debootstrap >/dev/null || apt-get install -y -q debootstrap >&2
    root="$work/rootfs"
    debootstrap --variant=minbase bookworm "$root" "$MIRROR" >&2
    # Debian's python3 and CA certificates (TLS to Redis/PostgreSQL); `python` for the chart's
    # exec-form probes; no recommends, no apt lists, no docs left in the image.
    chroot "$root" apt-get install -y -q --no-install-recommends \
        python3 python-is-python3 ca-certificates >&2
    chroot "$root" apt-get clean
    rm -rf "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* \
        "$root"/var/cache/debconf/*-old "$root"/var/log/*.log
    tar -C "$root" -c . | $DOCKER import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["python3"]' \
        - "$PYTHON_IMAGE_LOCAL" >&2
fi

if ! have "$UV_IMAGE_LOCAL"; then
    pip_download --quiet --no-deps --only-binary=:all: --dest "$work/uv" \
        "uv==${UV_VERSION}" >&2
    mkdir -p "$work/uvroot"
    python3 -m zipfile -e "$work"/uv/uv-*.whl "$work/uvwheel"
    install -m 0755 "$work"/uvwheel/uv-*.data/scripts/uv "$work/uvroot/uv"
    tar -C "$work/uvroot" -c uv | $DOCKER import - "$UV_IMAGE_LOCAL" >&2
fi

echo "PYTHON_IMAGE=$PYTHON_IMAGE_LOCAL"
echo "UV_IMAGE=$UV_IMAGE_LOCAL"
