"""The exactly-once flush of one buffered counter shard (DESIGN "Counters: exactly once, batched").

    claim (Lua)  ->  read in-flight (HSCAN)  ->  BEGIN; ledger insert ON CONFLICT DO NOTHING;
    one UPDATE ... FROM unnest(ids, deltas) if the batch is new; COMMIT  ->  ack (Lua)

A crash anywhere loses nothing (the in-flight hash stays until its own ack) and applies
nothing twice (a resumed batch keeps its id, and the ledger already has it).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from opentelemetry import trace
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from celery_stack_core import metrics
from celery_stack_core.keys import ShardKeys
from celery_stack_core.lua import lua
from celery_stack_core.targets import TARGETS
from celery_stack_core.tracing import links_from, tracing_active

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

# Called at each protocol step; the chaos test kills the process from here.
StepHook = Callable[[str], Awaitable[None]]
BIGINT_MAX = 2**63 - 1
STEPS = ("claimed", "ledger_inserted", "applied", "committed", "acked")


async def _no_hook(step: str) -> None:
    return None


@dataclass(frozen=True)
class Claim:
    batch_id: str
    resumed: bool
    since_ms: int | None


@dataclass(frozen=True)
class FlushResult:
    counter: str
    outcome: str  # empty | applied | already_applied
    batch_id: str | None = None
    keys: int = 0
    applied: int = 0
    dropped: int = 0
    lag_seconds: float = 0.0
    resumed: bool = False  # the batch was left in flight by an interrupted flush


async def claim(redis: aioredis.Redis, sk: ShardKeys) -> Claim | None:
    script = redis.register_script(lua(__file__, "claim"))
    res = await script(
        keys=[sk.live, sk.inflight, sk.batch, sk.live_since, sk.inflight_since],
        args=[str(uuid.uuid4())],
    )
    if not res:
        return None
    batch_id, how, since = res
    return Claim(batch_id, how == "resumed", int(since) if since else None)


async def read_inflight(redis: aioredis.Redis, sk: ShardKeys) -> tuple[list[int], list[int], int]:
    """The in-flight deltas as parallel id/delta lists sorted by id, plus fields that were not
    valid ids. Sorted ids make the UPDATE walk the table's pages and index in order."""
    script = redis.register_script(lua(__file__, "read_inflight"))
    pairs: dict[int, int] = {}
    invalid = 0
    cursor = "0"
    while True:
        cursor, packed_ids, packed_deltas, bad = await script(
            keys=[sk.inflight], args=[cursor, 5000]
        )
        invalid += int(bad)
        if packed_ids:
            # HSCAN may repeat an element; the hash is immutable here, so a repeat is the same
            # value and the dict keeps one.
            ids, deltas = packed_ids.split(","), packed_deltas.split(",")
            pairs.update(zip(map(int, ids), map(int, deltas), strict=True))
        if str(cursor) == "0":
            break
    # An id outside PostgreSQL's bigint would fail the whole batch's cast on every retry and
    # wedge the shard; the API never writes one, but the flusher does not trust the buffer.
    ordered = [
        i for i in sorted(pairs) if 0 < i <= BIGINT_MAX and -BIGINT_MAX <= pairs[i] <= BIGINT_MAX
    ]
    invalid += len(pairs) - len(ordered)
    return ordered, [pairs[i] for i in ordered], invalid


async def apply_batch(
    conn: AsyncConnection,
    sk: ShardKeys,
    batch_id: str,
    ids: list[int],
    deltas: list[int],
    hook: StepHook = _no_hook,
) -> int | None:
    """Inside the caller's transaction: the ledger insert, then the deltas if the batch is new.

    Returns the rows updated, or None when the ledger already had this batch.
    """
    table = TARGETS[sk.target].table
    column = sk.field
    assert column in TARGETS[sk.target].buffered
    new = await conn.execute(
        text(
            "INSERT INTO counter_batches (batch_id, counter, keys, applied, dropped) "
            "VALUES (:b, :c, :k, 0, 0) ON CONFLICT DO NOTHING RETURNING batch_id"
        ),
        {"b": batch_id, "c": sk.name, "k": len(ids)},
    )
    if new.first() is None:
        return None
    await hook("ledger_inserted")
    updated = await conn.execute(
        text(
            f"UPDATE {table} AS t SET {column} = t.{column} + d.delta "
            "FROM unnest(CAST(:ids AS bigint[]), CAST(:deltas AS bigint[])) AS d(id, delta) "
            "WHERE t.id = d.id"
        ),
        {"ids": ids, "deltas": deltas},
    )
    applied = int(updated.rowcount)
    await conn.execute(
        text("UPDATE counter_batches SET applied = :a, dropped = :d WHERE batch_id = :b"),
        {"a": applied, "d": len(ids) - applied, "b": batch_id},
    )
    await hook("applied")
    return applied


async def ack(redis: aioredis.Redis, sk: ShardKeys, batch_id: str) -> bool:
    script = redis.register_script(lua(__file__, "ack"))
    return bool(await script(keys=[sk.inflight, sk.batch, sk.inflight_since], args=[batch_id]))


async def take_trace_links(redis: aioredis.Redis, sk: ShardKeys) -> list[str]:
    """The traceparents of traced increments since the last flush (a bounded sample; one that
    lands between the claim and this read is linked here although its increment is in the next
    batch: links are for finding a view's flush, not a ledger)."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.lrange(sk.trace_links, 0, -1)
        pipe.delete(sk.trace_links)
        found, _ = await pipe.execute()
    return [str(tp) for tp in found]


async def flush_shard(
    redis: aioredis.Redis, engine: AsyncEngine, sk: ShardKeys, hook: StepHook = _no_hook
) -> FlushResult:
    """Flush one shard. Safe to repeat after any failure: it resumes the same batch."""
    started = time.monotonic()
    c = await claim(redis, sk)
    if c is None:
        return FlushResult(sk.name, "empty")
    await hook("claimed")
    links = links_from(await take_trace_links(redis, sk)) if tracing_active() else []
    attributes = {"counter": sk.name, "batch.id": c.batch_id}
    with tracer.start_as_current_span("counters.flush", links=links, attributes=attributes):
        ids, deltas, invalid = await read_inflight(redis, sk)
        async with engine.begin() as conn:
            applied = await apply_batch(conn, sk, c.batch_id, ids, deltas, hook)
        await hook("committed")
        await ack(redis, sk, c.batch_id)
        await hook("acked")

    lag = max(0.0, time.time() - c.since_ms / 1000) if c.since_ms else 0.0
    if applied is None:
        result = FlushResult(
            sk.name, "already_applied", c.batch_id, len(ids), lag_seconds=lag, resumed=c.resumed
        )
    else:
        dropped = len(ids) - applied + invalid
        result = FlushResult(
            sk.name, "applied", c.batch_id, len(ids), applied, dropped, lag, c.resumed
        )
        metrics.FLUSH_ROWS.labels(sk.name).inc(applied)
        if dropped:
            metrics.FLUSH_DROPPED.labels(sk.name).inc(dropped)
            log.warning(
                "flush dropped increments for rows that no longer exist",
                extra={"counter": sk.name, "batch_id": c.batch_id, "dropped": dropped},
            )
    metrics.FLUSH_BATCHES.labels(sk.name, result.outcome).inc()
    metrics.FLUSH_DURATION.labels(sk.name).observe(time.monotonic() - started)
    metrics.FLUSH_LAG.labels(sk.name).set(lag)
    if c.resumed:
        log.warning(
            "resumed an in-flight batch left by an interrupted flush",
            extra={"counter": sk.name, "batch_id": c.batch_id, "outcome": result.outcome},
        )
    return result
