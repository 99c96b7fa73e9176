"""The last report of a JanitorPolicy's sweep, kept in Redis for the operator's status."""

from __future__ import annotations

import json
from typing import Any

import redis.asyncio as aioredis

from celery_stack_core import keys

TTL = 7 * 86400


def report_key(policy: str) -> str:
    return f"{keys.PREFIX}:janitor:report:{policy}"


async def save(redis: aioredis.Redis, policy: str, report: dict[str, Any]) -> None:
    await redis.set(report_key(policy), json.dumps(report, default=str), ex=TTL)


async def load(redis: aioredis.Redis, policy: str) -> dict[str, Any] | None:
    raw = await redis.get(report_key(policy))
    return None if raw is None else dict(json.loads(raw))
