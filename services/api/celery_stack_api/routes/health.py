"""Liveness (the process answers), readiness (it can do work), metrics.

Readiness gates on PostgreSQL only, the system of record: without it no request can be served.
Redis is checked and reported (`degraded`) but does not gate: during a Redis outage views fall
back to direct PostgreSQL updates and scans wait in the outbox, so the API still does its work,
whereas a 503 from every pod at once would empty the Service (a total outage instead of a
degraded one) and leave the PDB no disruption to allow. See docs/operator-guide.md.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Response, status
from sqlalchemy import text

from celery_stack_api.deps import StateDep
from celery_stack_core import metrics

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _check(coro: Any) -> str:
    try:
        await asyncio.wait_for(coro, timeout=2.0)
        return "ok"
    except Exception as exc:
        return f"error: {type(exc).__name__}"


@router.get("/readyz")
async def readyz(state: StateDep, response: Response) -> dict[str, Any]:
    async def db() -> None:
        async with state.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    checks = {"database": await _check(db()), "redis": await _check(state.redis.ping())}
    ready = checks["database"] == "ok"
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return {"ready": ready, "degraded": checks["redis"] != "ok", "checks": checks}


@router.get("/metrics", include_in_schema=False)
async def read_metrics() -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
