"""Liveness (the process answers), readiness (it can do work), metrics.

Readiness gates on PostgreSQL only, the system of record: without it no request can be served.
Redis is checked and reported (`degraded`) but does not gate: during a Redis outage views fall
back to direct PostgreSQL updates and scans wait in the outbox, so the API still does its work,
whereas a 503 from every pod at once would empty the Service (a total outage instead of a
degraded one) and leave the PDB no disruption to allow. See docs/operator-guide.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Response, status
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from redis.exceptions import RedisError
from sqlalchemy import text

from celery_stack_api.deps import StateDep
from celery_stack_api.errors import RETRY_AFTER_SECONDS
from celery_stack_core import buffer, metrics

log = logging.getLogger(__name__)
router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _check(name: str, coro: Any) -> str:
    try:
        await asyncio.wait_for(coro, timeout=2.0)
        return "ok"
    except Exception as exc:  # any failure is an answer here, never a 500: logged, and reported
        log.warning("readiness check failed", extra={"check": name, "error": repr(exc)})
        return f"error: {type(exc).__name__}"


@router.get(
    "/readyz",
    responses={503: {"description": "Not ready: PostgreSQL is unreachable (detail + checks)."}},
)
async def readyz(state: StateDep, response: Response) -> dict[str, Any]:
    async def db() -> None:
        async with state.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))  # hand-written: the round trip is the check

    checks = {
        "database": await _check("database", db()),
        "redis": await _check("redis", state.redis.ping()),
    }
    ready = checks["database"] == "ok"
    body: dict[str, Any] = {"ready": ready, "degraded": checks["redis"] != "ok", "checks": checks}
    if not ready:
        # An outage: the declared error shape (Problem) plus the checks, and when to ask again.
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        body["detail"] = "not ready: the database is unreachable"
    return body


class PendingAge(Collector):
    """The flush lag as the API sees it in Redis, so it is exported while no flusher runs."""

    def __init__(self, oldest_ms: dict[str, int | None]) -> None:
        self.oldest_ms = oldest_ms

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            metrics.PENDING_AGE_NAME, metrics.PENDING_AGE_HELP, labels=["counter"]
        )
        now_ms = time.time() * 1000
        for counter, since in sorted(self.oldest_ms.items()):
            age = 0.0 if since is None else max(0.0, (now_ms - since) / 1000)
            family.add_metric([counter], age)
        yield family


@router.get("/metrics", include_in_schema=False)
async def read_metrics(state: StateDep) -> Response:
    extra: list[Collector] = []
    try:
        oldest = await asyncio.wait_for(
            buffer.oldest_pending_ms(state.redis, shards=state.settings.counters.shards), 2.0
        )
        extra.append(PendingAge(oldest))
    except (RedisError, TimeoutError) as exc:
        log.warning("redis unreachable at scrape; pending age left out", extra={"error": repr(exc)})
    body, content_type = metrics.render(metrics.registry("api", extra))
    return Response(body, media_type=content_type)
