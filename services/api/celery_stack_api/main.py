"""The FastAPI application: `create_app(settings)` for tests, `app` for uvicorn."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

from fastapi import FastAPI, status

from celery_stack_api import errors, openapi
from celery_stack_api.auth import TokenTable
from celery_stack_api.counting import NotFound, Unavailable
from celery_stack_api.docs import install_offline_docs
from celery_stack_api.fastpath import BATCH_PATH, ViewFastPath
from celery_stack_api.http_metrics import HttpMetrics
from celery_stack_api.limits import BodyLimit
from celery_stack_api.routes import content, counters, examples, health, maintenance, rules, scans
from celery_stack_api.scans import BadCursor, ScanConflict, ScanNotFound
from celery_stack_api.state import AppState
from celery_stack_core import celery_metrics, outbox
from celery_stack_core.celery_app import make_celery
from celery_stack_core.config import Settings, get_settings
from celery_stack_core.db import make_engine
from celery_stack_core.redis_client import make_async_redis
from celery_stack_core.rules import load_rules
from celery_stack_core.tracing import flush_tracing, setup_tracing

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, view_fast_path: bool = True) -> FastAPI:
    """The app. `view_fast_path=False` leaves every view to the FastAPI route (tests compare)."""
    settings = settings or get_settings()
    # A malformed MAINTENANCE_RULES is a boot error (as in the worker and beat), never a 500 of
    # GET /api/v1/maintenance/rules at 3 a.m.: RuleConfigError names the rule and the field.
    load_rules(settings)

    traced = setup_tracing("api", settings)
    fast = view_fast_path and not traced
    app = FastAPI(
        # FastAPI's native OpenTelemetry looks for configured global providers on every
        # request (environment reads included). Our tracing is FastAPIInstrumentor, and the fast
        # paths are only installed when it is off: then there is nothing to report to, and the
        # check is a measurable share of a view's cost (bench/bench_ingest.py).
        telemetry={"tracing": False, "metrics": False, "logs": False} if fast else None,
        title="celery-stack",
        version="0.1.0",
        lifespan=_lifespan(settings),
        description="Counters, scans and maintenance on Celery, Redis and PostgreSQL.",
        docs_url=None,  # served by install_offline_docs: no CDN
        redoc_url=None,
    )
    install_offline_docs(app)
    app.include_router(health.router)
    app.include_router(counters.router)
    app.include_router(content.router)
    app.include_router(scans.router)
    app.include_router(maintenance.router)
    app.include_router(rules.router)
    app.include_router(examples.router)

    errors.install(
        app,
        {
            NotFound: status.HTTP_404_NOT_FOUND,
            ScanNotFound: status.HTTP_404_NOT_FOUND,
            ScanConflict: status.HTTP_409_CONFLICT,
            BadCursor: status.HTTP_422_UNPROCESSABLE_CONTENT,
            Unavailable: status.HTTP_503_SERVICE_UNAVAILABLE,
        },
    )
    openapi.install(app)

    _install_middleware(app, settings, traced=traced, fast=fast)
    return app


def _lifespan(settings: Settings) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's connections: opened at startup into `app.state.app`, closed at shutdown."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = AppState(
            settings=settings,
            engine=make_engine(settings),
            redis=make_async_redis(settings),
            tokens=TokenTable(settings),
            celery=outbox.fail_fast(make_celery(settings, "celery_stack_api")),
        )
        celery_metrics.install_publisher()
        app.state.app = state
        try:
            yield
        finally:
            await state.redis.aclose()
            if state.celery is not None:
                state.celery.close()
            await state.engine.dispose()
            flush_tracing()

    return lifespan


def _install_middleware(app: FastAPI, settings: Settings, *, traced: bool, fast: bool) -> None:
    if traced:
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,readyz,metrics")
    elif fast:
        # The view ingest hot path without FastAPI's per-request cost (see fastpath.py).
        app.add_middleware(ViewFastPath, api=app)
    # The last added is the outermost: the size limit first (nothing reads a larger body),
    # then the text rule, so the fast path above sees only acceptable text too.
    app.add_middleware(errors.TextGuard)
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.api.max_body_bytes,
        per_path={BATCH_PATH: settings.api.batch_max_body_bytes},
    )
    app.add_middleware(HttpMetrics)  # outermost: every answer is counted, 413s too
