"""The ingest side of buffered counters (views): HINCRBY into sharded pending hashes.

Never a key per object and never a task per event (field reports 000, 001). The flush side,
which moves these buffers into PostgreSQL exactly once, is services/worker-counters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import redis.asyncio as aioredis
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection

from celery_stack_core import keys
from celery_stack_core.lua import lua
from celery_stack_core.models import Base
from celery_stack_core.targets import TARGETS, TargetType


def shard_keys(target: TargetType, field: str, target_id: int, shards: int) -> keys.ShardKeys:
    return keys.ShardKeys(target, field, keys.shard_of(target_id, shards))


async def increment(  # noqa: PLR0913 - one id of one field; the options are keyword-only
    redis: aioredis.Redis,
    target: TargetType,
    field: str,
    target_id: int,
    *,
    shards: int,
    delta: int = 1,
    viewer: str | None = None,
) -> None:
    """Buffer `delta` for one id in one round trip (plus the viewer in its HyperLogLog)."""
    sk = shard_keys(target, field, target_id, shards)
    script = redis.register_script(lua(__file__, "counter_ingest"))
    now_ms = int(time.time() * 1000)
    if viewer is None:
        await script(keys=[sk.live, sk.live_since], args=[target_id, delta, now_ms])
        return
    async with redis.pipeline(transaction=False) as pipe:
        await script(keys=[sk.live, sk.live_since], args=[target_id, delta, now_ms], client=pipe)
        pipe.pfadd(keys.unique_viewers(target, target_id), viewer)
        await pipe.execute()


async def increment_in_db(
    conn: AsyncConnection, target: TargetType, field: str, target_id: int, delta: int = 1
) -> bool:
    """The fallback when Redis is down: one statement, applied directly. False if no such row."""
    assert field in TARGETS[target].buffered
    table = Base.metadata.tables[TARGETS[target].table]
    res = await conn.execute(
        update(table).where(table.c.id == target_id).values({field: table.c[field] + delta})
    )
    return bool(res.rowcount)


@dataclass(frozen=True)
class Buffered:
    """What Redis still holds for one id of one field."""

    live: int
    inflight: int
    inflight_batch: str | None


async def buffered(
    redis: aioredis.Redis, target: TargetType, field: str, target_id: int, *, shards: int
) -> Buffered:
    sk = shard_keys(target, field, target_id, shards)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hget(sk.live, str(target_id))
        pipe.hget(sk.inflight, str(target_id))
        pipe.get(sk.batch)
        live, inflight, batch = await pipe.execute()
    return Buffered(int(live or 0), int(inflight or 0), batch if inflight else None)


async def unique_viewers(redis: aioredis.Redis, target: TargetType, target_id: int) -> int:
    return int(await redis.pfcount(keys.unique_viewers(target, target_id)))


async def mark_dirty(redis: aioredis.Redis, target: TargetType, target_id: int) -> None:
    """Ask for a recount of `target_id`'s action counts; call after the action has committed."""
    await redis.sadd(keys.DIRTY, f"{target}:{target_id}")
