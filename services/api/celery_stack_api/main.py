"""The FastAPI application: `create_app(settings)` for tests, `app` for uvicorn."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import redis.exceptions
from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError

from celery_stack_api.auth import TokenTable
from celery_stack_api.counting import NotFound, Unavailable
from celery_stack_api.docs import install_offline_docs
from celery_stack_api.fastpath import ViewFastPath
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
from celery_stack_core.tracing import flush_tracing, setup_tracing

log = logging.getLogger(__name__)
RETRY_AFTER = {"Retry-After": "5"}


def _status_handler(code: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, code)

    return handle


def create_app(settings: Settings | None = None, *, view_fast_path: bool = True) -> FastAPI:
    """The app. `view_fast_path=False` leaves every view to the FastAPI route (tests compare)."""
    settings = settings or get_settings()

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

    app = FastAPI(
        title="celery-stack",
        version="0.1.0",
        lifespan=lifespan,
        description="Counters, scans and maintenance on Celery, Redis and PostgreSQL.",
        docs_url=None,  # served by install_offline_docs: no CDN
        redoc_url=None,
    )
    install_offline_docs(app)
    app.add_middleware(BodyLimit, max_bytes=settings.api.max_body_bytes)
    app.include_router(health.router)
    app.include_router(counters.router)
    app.include_router(content.router)
    app.include_router(scans.router)
    app.include_router(maintenance.router)
    app.include_router(rules.router)
    app.include_router(examples.router)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status.HTTP_404_NOT_FOUND)

    # Scan errors map to status codes here, once, instead of in every route.
    for exc_class, code in (
        (ScanNotFound, status.HTTP_404_NOT_FOUND),
        (ScanConflict, status.HTTP_409_CONFLICT),
        (BadCursor, status.HTTP_422_UNPROCESSABLE_CONTENT),
    ):
        app.add_exception_handler(exc_class, _status_handler(code))

    @app.exception_handler(Unavailable)
    async def _unavailable(request: Request, exc: Unavailable) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status.HTTP_503_SERVICE_UNAVAILABLE, RETRY_AFTER)

    # A store that is down is the client's cue to retry, not a server bug: 503, never 500.
    @app.exception_handler(SQLAlchemyError)
    @app.exception_handler(redis.exceptions.ConnectionError)
    @app.exception_handler(redis.exceptions.TimeoutError)
    @app.exception_handler(OSError)
    async def _store_down(request: Request, exc: Exception) -> JSONResponse:
        log.warning("store unavailable", extra={"path": request.url.path, "error": repr(exc)})
        return JSONResponse(
            {"detail": "a backing store is unavailable, retry later"},
            status.HTTP_503_SERVICE_UNAVAILABLE,
            RETRY_AFTER,
        )

    if setup_tracing("api", settings):
        from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

        FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,readyz,metrics")
    elif view_fast_path:
        # The view ingest hot path without FastAPI's per-request cost (see fastpath.py).
        app.add_middleware(ViewFastPath, api=app)
    app.add_middleware(HttpMetrics)  # outermost: the fast path's views are counted too
    return app
