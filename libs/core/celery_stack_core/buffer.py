"""The ingest side of buffered counters (views): HINCRBY into sharded pending hashes.

Never a key per object and never a task per event (field reports 000, 001). The flush side,
which moves these buffers into PostgreSQL exactly once, is services/worker-counters.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import redis.asyncio as aioredis
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncConnection

from celery_stack_core import keys
from celery_stack_core.lua import lua
from celery_stack_core.models import Base
from celery_stack_core.targets import TARGETS, TargetType
from celery_stack_core.tracing import current_traceparent


def shard_keys(target: TargetType, field: str, target_id: int, shards: int) -> keys.ShardKeys:
    return keys.ShardKeys(target, field, keys.shard_of(target_id, shards))


# Traceparents kept per shard for the flush's span links: a sample, not every view.
MAX_TRACE_LINKS = 32


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
    """Buffer `delta` for one id in one round trip (plus the viewer in its HyperLogLog, and the
    request's traceparent for the flush's span links when it is traced)."""
    sk = shard_keys(target, field, target_id, shards)
    script = redis.register_script(lua(__file__, "counter_ingest"))
    now_ms = int(time.time() * 1000)
    traceparent = current_traceparent()
    if viewer is None and traceparent is None:
        await script(keys=[sk.live, sk.live_since], args=[target_id, delta, now_ms])
        return
    async with redis.pipeline(transaction=False) as pipe:
        await script(keys=[sk.live, sk.live_since], args=[target_id, delta, now_ms], client=pipe)
        if viewer is not None:
            pipe.pfadd(keys.unique_viewers(target, target_id), viewer)
        if traceparent is not None:
            pipe.lpush(sk.trace_links, traceparent)
            pipe.ltrim(sk.trace_links, 0, MAX_TRACE_LINKS - 1)
        await pipe.execute()


async def increment_many(
    redis: aioredis.Redis,
    field: str,
    deltas: Mapping[TargetType, Mapping[int, int]],
    *,
    shards: int,
) -> None:
    """Buffer many deltas in one round trip: one script call per touched shard (each call
    stays within one shard's hash tag), all in one MULTI/EXEC, so none or all are applied.

    Each call carries its shard's ids and deltas packed in one string (counter_ingest_many.lua),
    and the script's text (EVAL, not EVALSHA): a NOSCRIPT error inside EXEC would leave the
    other shards applied, and checking with SCRIPT EXISTS first costs a round trip per request.
    """
    packed: dict[tuple[TargetType, int], list[str]] = {}
    for target, per_id in deltas.items():
        for target_id, delta in per_id.items():
            text = str(target_id)
            # keys.shard_of, inlined: the id's text is needed for the packing anyway
            shard = zlib.crc32(text.encode()) % shards
            parts = packed.get((target, shard))
            if parts is None:
                parts = packed[(target, shard)] = []
            parts += (text, str(delta))
    if not packed:
        return
    script = lua(__file__, "counter_ingest_many")
    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=True) as pipe:
        for (target, shard), parts in packed.items():
            sk = keys.ShardKeys(target, field, shard)
            pipe.eval(script, 2, sk.live, sk.live_since, now_ms, " ".join(parts))
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
    generation: int  # the shard's claim count when this was read (keys.ShardKeys.generation)


async def buffered(
    redis: aioredis.Redis, target: TargetType, field: str, target_id: int, *, shards: int
) -> Buffered:
    sk = shard_keys(target, field, target_id, shards)
    async with redis.pipeline(transaction=True) as pipe:
        pipe.hget(sk.live, str(target_id))
        pipe.hget(sk.inflight, str(target_id))
        pipe.get(sk.batch)
        pipe.get(sk.generation)
        live, inflight, batch, gen = await pipe.execute()
    return Buffered(int(live or 0), int(inflight or 0), batch if inflight else None, int(gen or 0))


async def generation(
    redis: aioredis.Redis, target: TargetType, field: str, target_id: int, *, shards: int
) -> int:
    """How many batches the shard holding `target_id` has claimed so far."""
    sk = shard_keys(target, field, target_id, shards)
    return int(await redis.get(sk.generation) or 0)


async def unique_viewers(redis: aioredis.Redis, target: TargetType, target_id: int) -> int:
    return int(await redis.pfcount(keys.unique_viewers(target, target_id)))


async def mark_dirty(redis: aioredis.Redis, target: TargetType, target_id: int) -> None:
    """Ask for a recount of `target_id`'s action counts; call after the action has committed."""
    await redis.sadd(keys.DIRTY, f"{target}:{target_id}")


async def oldest_pending_ms(redis: aioredis.Redis, *, shards: int) -> dict[str, int | None]:
    """Per counter (`target:field`), when its oldest increment not yet applied to PostgreSQL was
    buffered (ms), live or in flight; None for a counter with nothing buffered. One MGET."""
    from celery_stack_core.targets import BUFFERED

    shard_list = [keys.ShardKeys(t, f, n) for t, f in BUFFERED for n in range(shards)]
    names = [k for sk in shard_list for k in (sk.live_since, sk.inflight_since)]
    values = await redis.mget(names)
    oldest: dict[str, int | None] = {f"{t}:{f}": None for t, f in BUFFERED}
    for i, sk in enumerate(shard_list):
        counter = f"{sk.target}:{sk.field}"
        for raw in values[2 * i : 2 * i + 2]:
            if raw:
                seen = oldest[counter]
                oldest[counter] = int(raw) if seen is None else min(seen, int(raw))
    return oldest
