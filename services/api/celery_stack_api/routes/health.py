"""Liveness (the process answers), readiness (it can do work: DB and Redis reachable), metrics."""

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
    ready = all(v == "ok" for v in checks.values())
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return {"ready": ready, "checks": checks}


@router.get("/metrics", include_in_schema=False)
async def read_metrics() -> Response:
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
