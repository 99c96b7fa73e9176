"""The exactly-once flush of one buffered counter shard (DESIGN "Counters: exactly once, batched").

    claim (Lua)  ->  read in-flight (HSCAN)  ->  BEGIN; ledger insert ON CONFLICT DO NOTHING;
    one UPDATE ... FROM unnest(ids, deltas) if the batch is new; COMMIT  ->  ack (Lua)

A crash anywhere loses nothing (the in-flight hash stays until its own ack) and applies
nothing twice (a resumed batch keeps its id, and the ledger already has it).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis
from opentelemetry import trace
from sqlalchemy import Table, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from celery_stack_core import metrics
from celery_stack_core.hooks import HOOKS
from celery_stack_core.keys import ShardKeys
from celery_stack_core.lua import lua
from celery_stack_core.models import Base, CounterBatch
from celery_stack_core.targets import TARGETS
from celery_stack_core.tracing import links_from, tracing_active

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

# The protocol's steps, announced through HOOKS ("flush"): the chaos test kills the process at
# each of them.
STEPS = ("claimed", "ledger_inserted", "applied", "committed", "acked")
_ledger: Table = CounterBatch.__table__


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
        keys=[sk.live, sk.inflight, sk.batch, sk.live_since, sk.inflight_since, sk.generation],
        args=[str(uuid.uuid4())],
    )
    if not res:
        return None
    batch_id, how, since = res
    return Claim(batch_id, how == "resumed", int(since) if since else None)


@dataclass(frozen=True)
class InFlight:
    """An in-flight batch as PostgreSQL takes it: comma-joined ids and deltas (same order)."""

    ids: str
    deltas: str
    keys: int  # valid fields
    invalid: int  # fields that were not a valid id and delta (counted as dropped)


async def read_inflight(redis: aioredis.Redis, sk: ShardKeys) -> InFlight:
    """The in-flight deltas, validated by the script (read_inflight.lua). HSCAN may return a
    field twice; the UPDATE applies a row once whatever the join repeats, and `keys` comes
    from HLEN, so a repeat changes nothing."""
    script = redis.register_script(lua(__file__, "read_inflight"))
    ids: list[str] = []
    deltas: list[str] = []
    invalid, fields = 0, 0
    cursor = "0"
    while True:
        step = await script(keys=[sk.inflight], args=[cursor, 5000])
        first, cursor = cursor == "0", str(step[0])
        if step[1]:
            ids.append(step[1])
            deltas.append(step[2])
        invalid += int(step[3])
        fields = int(step[4]) if first else fields
        if cursor == "0":
            break
    return InFlight(",".join(ids), ",".join(deltas), fields - invalid, invalid)


async def apply_batch(
    conn: AsyncConnection,
    sk: ShardKeys,
    batch_id: str,
    batch: InFlight,
) -> int | None:
    """Inside the caller's transaction: the ledger insert, then the deltas if the batch is new.

    Returns the rows updated, or None when the ledger already had this batch.
    """
    table = Base.metadata.tables[TARGETS[sk.target].table]
    column = sk.field
    assert column in TARGETS[sk.target].buffered
    new = await conn.execute(
        insert(_ledger)
        .values(batch_id=batch_id, counter=sk.name, keys=batch.keys, applied=0, dropped=0)
        .on_conflict_do_nothing()
        .returning(_ledger.c.batch_id)
    )
    if new.first() is None:
        return None
    await HOOKS.reach("flush", "ledger_inserted")
    # Hand-written: one UPDATE ... FROM unnest is the point, and the CTE sums on the server
    # what it applied (no row comes back to Python).
    applied, total = (
        await conn.execute(
            text(
                f"WITH u AS (UPDATE {table.name} AS t SET {column} = t.{column} + d.delta "
                "FROM unnest(CAST(string_to_array(:ids, ',') AS bigint[]), "
                "CAST(string_to_array(:deltas, ',') AS bigint[])) AS d(id, delta) "
                "WHERE t.id = d.id RETURNING d.delta) "
                "SELECT count(*), coalesce(sum(delta), 0) FROM u"
            ),
            {"ids": batch.ids, "deltas": batch.deltas},
        )
    ).one()
    await conn.execute(
        update(_ledger)
        .where(_ledger.c.batch_id == batch_id)
        .values(applied=applied, dropped=batch.keys - applied, total=int(total))
    )
    await HOOKS.reach("flush", "applied")
    return int(applied)


async def ack(redis: aioredis.Redis, sk: ShardKeys, batch_id: str) -> bool:
    script = redis.register_script(lua(__file__, "ack"))
    return bool(await script(keys=[sk.inflight, sk.batch, sk.inflight_since], args=[batch_id]))


@dataclass(frozen=True)
class Prepared:
    """A claimed batch, read and parsed, ready for the transaction."""

    sk: ShardKeys
    claim: Claim
    batch: InFlight
    links: list[str]  # traceparents of traced increments since the last flush (tracing only)


async def prepare(redis: aioredis.Redis, sk: ShardKeys) -> Prepared | None:
    c = await claim(redis, sk)
    if c is None:
        return None
    await HOOKS.reach("flush", "claimed")
    links = await take_trace_links(redis, sk) if tracing_active() else []
    return Prepared(sk, c, await read_inflight(redis, sk), links)


async def take_trace_links(redis: aioredis.Redis, sk: ShardKeys) -> list[str]:
    """The traceparents of traced increments since the last flush (a bounded sample; one that
    lands between the claim and this read is linked here although its increment is in the next
    batch: links are for finding a view's flush, not a ledger)."""
    async with redis.pipeline(transaction=True) as pipe:
        pipe.lrange(sk.trace_links, 0, -1)
        pipe.delete(sk.trace_links)
        found, _ = await pipe.execute()
    return [str(tp) for tp in found]


async def flush_shard(redis: aioredis.Redis, engine: AsyncEngine, sk: ShardKeys) -> FlushResult:
    """Flush one shard. Safe to repeat after any failure: it resumes the same batch."""
    started = time.monotonic()
    p = await prepare(redis, sk)
    if p is None:
        return FlushResult(sk.name, "empty")
    attributes = {"counter": sk.name, "batch.id": p.claim.batch_id}
    with tracer.start_as_current_span(
        "counters.flush", links=links_from(p.links), attributes=attributes
    ):
        async with engine.begin() as conn:
            applied = await apply_batch(conn, sk, p.claim.batch_id, p.batch)
        await HOOKS.reach("flush", "committed")
        await ack(redis, sk, p.claim.batch_id)
        await HOOKS.reach("flush", "acked")
    return finish(p, applied, started)


async def flush_many(
    redis: aioredis.Redis,
    engine: AsyncEngine,
    shards: list[ShardKeys],
) -> list[FlushResult]:
    """Flush several shards in ONE transaction, reading the next shard while PostgreSQL applies
    the current one:

        claim+read shard 1 | claim+read shard 2 | claim+read shard 3 | ...
                           | apply shard 1       | apply shard 2      | ... COMMIT -> ack all

    Each batch keeps its own ledger row, so the protocol per batch is unchanged: a crash before
    COMMIT leaves every claimed batch in flight and none applied; after COMMIT every one of them
    is in the ledger and is only acked. One commit (one WAL flush) instead of one per shard.
    """
    started = time.monotonic()
    ready: asyncio.Queue[Prepared | None] = asyncio.Queue(maxsize=2)
    reader = asyncio.create_task(_read_all(redis, shards, ready))
    done: list[tuple[Prepared, int | None]] = []
    with tracer.start_as_current_span("counters.flush", attributes={"shards": len(shards)}) as span:
        try:
            async with engine.begin() as conn:
                while (p := await ready.get()) is not None:
                    for link in links_from(p.links):  # each batch's views link to this flush
                        span.add_link(link.context)
                    applied = await apply_batch(conn, p.sk, p.claim.batch_id, p.batch)
                    done.append((p, applied))
        except BaseException:
            await _stop(reader, ready)
            raise
        if done:
            await HOOKS.reach("flush", "committed")
        await _ack_all(redis, [p for p, _ in done])
        for _ in done:
            await HOOKS.reach("flush", "acked")
    await reader  # a read that failed after some shards were read: raised now, after their ack
    return [finish(p, applied, started) for p, applied in done]


async def _read_all(
    redis: aioredis.Redis,
    shards: list[ShardKeys],
    ready: asyncio.Queue[Prepared | None],
) -> None:
    """Claim and read each shard in turn, handing it to the transaction; None ends the list."""
    try:
        for sk in shards:
            p = await prepare(redis, sk)
            if p is not None:
                await ready.put(p)
    except asyncio.CancelledError:
        raise  # the transaction failed: nobody waits for the end of the list
    except BaseException:
        await ready.put(None)  # commit what was read; flush_many raises this afterwards
        raise
    await ready.put(None)


async def _stop(reader: asyncio.Task[None], ready: asyncio.Queue[Prepared | None]) -> None:
    """Stop the reader after the transaction failed. Its claims stay in flight (the next flush
    resumes them). redis-py can swallow a cancellation, so the queue is kept empty until the
    reader is really done: it must never wait on a put that nobody takes."""
    reader.cancel()
    while not reader.done():
        while not ready.empty():
            ready.get_nowait()
        await asyncio.wait({reader}, timeout=0.05)
    await asyncio.gather(reader, return_exceptions=True)


async def _ack_all(redis: aioredis.Redis, batches: list[Prepared]) -> None:
    if not batches:
        return
    script = redis.register_script(lua(__file__, "ack"))
    async with redis.pipeline(transaction=False) as pipe:
        for p in batches:
            sk = p.sk
            await script(
                keys=[sk.inflight, sk.batch, sk.inflight_since],
                args=[p.claim.batch_id],
                client=pipe,
            )
        await pipe.execute()


def finish(p: Prepared, applied: int | None, started: float) -> FlushResult:
    """The result of one flushed batch, with its metrics and log lines."""
    sk, c = p.sk, p.claim
    lag = max(0.0, time.time() - c.since_ms / 1000) if c.since_ms else 0.0
    if applied is None:
        result = FlushResult(
            sk.name, "already_applied", c.batch_id, p.batch.keys, lag_seconds=lag, resumed=c.resumed
        )
    else:
        dropped = p.batch.keys - applied + p.batch.invalid
        result = FlushResult(
            sk.name, "applied", c.batch_id, p.batch.keys, applied, dropped, lag, c.resumed
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
