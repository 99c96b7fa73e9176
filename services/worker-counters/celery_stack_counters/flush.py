"""The exactly-once flush of buffered counter shards (DESIGN "Counters: exactly once, batched").

    claim every shard (Lua, one pipelined round trip)  ->  BEGIN
      -> per shard: read in-flight (HSCAN Lua) and parse  |  one statement: ledger insert
         ON CONFLICT DO NOTHING, and only if new, UPDATE ... FROM unnest(ids, deltas)
         (shard k+1 is read while PostgreSQL applies shard k)
      -> one ledger UPDATE of what each batch applied; COMMIT  ->  ack every batch (Lua, pipelined)

A crash anywhere loses nothing (each in-flight hash stays until its own ack) and applies
nothing twice (a resumed batch keeps its id, and the ledger already has it). A batch's ledger
row and its deltas go in with one statement, so no COMMIT can hold one without the other.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from opentelemetry import trace
from sqlalchemy import (
    ARRAY,
    BigInteger,
    Integer,
    Table,
    Text,
    bindparam,
    cast,
    func,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import UUID, insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.selectable import TableValuedAlias

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
# each of them. Once per flush: claimed (every shard's batch in flight, no transaction yet),
# acked. Once per lane (transaction): recorded (its ledger rows hold what each batch applied;
# no COMMIT yet), committed (the other lane may still be open). Once per batch: read (its
# deltas read, earlier batches applied in open transactions), applied (its ledger row and
# deltas written, not committed).
STEPS = ("claimed", "read", "applied", "recorded", "committed", "acked")
_ledger: Table = CounterBatch.__table__
# Transactions applying a flush's batches side by side. PostgreSQL runs a statement on one core;
# two lanes let a flush use two while the reader (Redis) stays ahead of both (measured:
# bench/bench_flush.py). Each needs a pooled connection.
LANES = 2


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
    return (await claim_all(redis, [sk]))[0]


async def claim_all(redis: aioredis.Redis, shards: list[ShardKeys]) -> list[Claim | None]:
    """Claim every shard in one pipelined round trip (each claim is its own atomic script)."""
    script = redis.register_script(lua(__file__, "claim"))
    async with redis.pipeline(transaction=False) as pipe:
        for sk in shards:
            await script(
                keys=[
                    sk.live,
                    sk.inflight,
                    sk.batch,
                    sk.live_since,
                    sk.inflight_since,
                    sk.generation,
                ],
                args=[str(uuid.uuid4())],
                client=pipe,
            )
        replies = await pipe.execute()
    out: list[Claim | None] = []
    for res in replies:
        if not res:
            out.append(None)
            continue
        batch_id, how, since = res
        out.append(Claim(batch_id, how == "resumed", int(since) if since else None))
    return out


@dataclass(frozen=True)
class InFlight:
    """An in-flight batch as PostgreSQL takes it: ids and deltas (same order) as bigint array
    literals, "{1,2,...}", which PostgreSQL parses itself."""

    ids: str
    deltas: str
    keys: int  # valid fields
    invalid: int  # fields that were not a valid id and delta (counted as dropped)


async def read_inflight(redis: aioredis.Redis, sk: ShardKeys) -> InFlight:
    """The in-flight deltas, validated and packed by the script (read_inflight.lua): the
    flusher never turns tens of thousands of fields into Python objects (that cost more CPU
    than PostgreSQL's parse of the same text; measured: bench/flush_breakdown.py). HSCAN may
    return a field twice; the UPDATE applies a row once whatever the join repeats, and `keys`
    comes from HLEN, so a repeat changes nothing."""
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
    return InFlight(
        "{" + ",".join(ids) + "}", "{" + ",".join(deltas) + "}", fields - invalid, invalid
    )


@dataclass(frozen=True)
class Applied:
    rows: int  # rows updated
    total: int  # the sum of their deltas


def _unnest(name: str, *columns: tuple[str, str, list[Any] | str]) -> TableValuedAlias:
    """unnest($1::type[], $2::type[], ...) AS name(col, col, ...), one row per index, from
    arrays bound as parameters: a list is sent binary (asyncpg); a str is an array literal
    ("{1,2,3}") that PostgreSQL parses (a big batch: cheaper than Python objects)."""
    arrays = []
    for column, kind, value in columns:
        param = f"{name}_{column}"
        if isinstance(value, str):
            arrays.append(cast(cast(bindparam(param, value, type_=Text), Text), ARRAY(TYPES[kind])))
        else:
            arrays.append(cast(bindparam(param, value), ARRAY(TYPES[kind])))
    fn = func.unnest(*arrays)
    return fn.table_valued(*(c for c, _, _ in columns)).render_derived(name=name)


TYPES: dict[str, Any] = {"bigint": BigInteger, "uuid": UUID(as_uuid=False), "int": Integer}


async def apply_batch(
    conn: AsyncConnection,
    sk: ShardKeys,
    batch_id: str,
    batch: InFlight,
) -> Applied | None:
    """Inside the caller's transaction, in ONE statement: the batch's ledger row and, only if
    the row is new, its deltas with one UPDATE ... FROM unnest (filtered on the insert's
    RETURNING, so the insert decides, atomically). Returns what was applied (summed on the
    server: no row comes back to Python), or None when the ledger already had this batch. The
    ledger row's applied/dropped/total are written by record() before COMMIT."""
    table = Base.metadata.tables[TARGETS[sk.target].table]
    column = table.c[sk.field]
    assert sk.field in TARGETS[sk.target].buffered
    ledger = (
        insert(_ledger)
        .values(batch_id=batch_id, counter=sk.name, keys=batch.keys, applied=0, dropped=0)
        .on_conflict_do_nothing()
        .returning(_ledger.c.batch_id)
        .cte("l")
    )
    d = _unnest("d", ("id", "bigint", batch.ids), ("delta", "bigint", batch.deltas))
    applied = (
        update(table)
        .values({column: column + d.c.delta})
        .where(table.c.id == d.c.id, select(ledger.c.batch_id).exists())
        .returning(d.c.delta)
        .cte("u")
    )
    new, rows, total = (
        await conn.execute(
            select(
                select(func.count()).select_from(ledger).scalar_subquery(),
                func.count(),
                func.coalesce(func.sum(applied.c.delta), 0),
            ).select_from(applied)
        )
    ).one()
    await HOOKS.reach("flush", "applied")
    return Applied(int(rows), int(total)) if new else None


async def record(conn: AsyncConnection, batches: list[tuple[str, InFlight, Applied]]) -> None:
    """Inside the caller's transaction: what each new batch applied, into its ledger row (one
    statement for every batch of the flush)."""
    if batches:
        rows = _unnest(
            "r",
            ("batch_id", "uuid", [b for b, _, _ in batches]),
            ("applied", "int", [a.rows for _, _, a in batches]),
            ("dropped", "int", [f.keys - a.rows for _, f, a in batches]),
            ("total", "bigint", [a.total for _, _, a in batches]),
        )
        await conn.execute(
            update(_ledger)
            .where(_ledger.c.batch_id == rows.c.batch_id)
            .values(applied=rows.c.applied, dropped=rows.c.dropped, total=rows.c.total)
        )
    await HOOKS.reach("flush", "recorded")


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


async def prepare(redis: aioredis.Redis, sk: ShardKeys, c: Claim) -> Prepared:
    links = await take_trace_links(redis, sk) if tracing_active() else []
    p = Prepared(sk, c, await read_inflight(redis, sk), links)
    await HOOKS.reach("flush", "read")
    return p


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
    """Flush one shard (flush_many of one). Safe to repeat after any failure: it resumes the
    same batch."""
    done = await flush_many(redis, engine, [sk])
    return done[0] if done else FlushResult(sk.name, "empty")


async def flush_many(
    redis: aioredis.Redis,
    engine: AsyncEngine,
    shards: list[ShardKeys],
) -> list[FlushResult]:
    """Flush several shards in LANES transactions side by side, reading the next shard while
    PostgreSQL applies the current ones:

        claim all | read 1 | read 2        | read 3 | read 4 ...
                  |        | lane 1: BEGIN; apply 1  | apply 3 ... record; COMMIT
                  |        |        | lane 2: BEGIN; apply 2 | apply 4 ... record; COMMIT
                                                                  -> ack every committed batch

    Each batch's ledger row and deltas are one statement, so the protocol per batch does not
    depend on which transaction holds it: a crash before a lane's COMMIT leaves its batches in
    flight and none applied; after it they are in the ledger and are only acked. One Redis
    round trip claims every shard, one acks them; a lane that fails leaves its batches in flight
    (raised after the others' acks). Returns a result per claimed shard of the lanes that
    committed (empty shards are left out).
    """
    started = time.monotonic()
    with tracer.start_as_current_span("counters.flush", attributes={"shards": len(shards)}) as span:
        claims = [
            (sk, c) for sk, c in zip(shards, await claim_all(redis, shards), strict=True) if c
        ]
        if not claims:
            return []
        await HOOKS.reach("flush", "claimed")
        # A batch's lane is its shard's: every counter shards ids the same way (keys.shard_of),
        # so two lanes never update the same row and cannot deadlock each other, even once a
        # table has two buffered counters (a lane taking whatever comes next could).
        lanes = sorted({sk.shard % LANES for sk, _ in claims})
        queues: dict[int, asyncio.Queue[Prepared | None]] = {
            lane: asyncio.Queue(maxsize=1) for lane in lanes
        }
        reader = asyncio.create_task(_read_all(redis, claims, queues))
        appliers = [asyncio.create_task(_apply_all(engine, q, span)) for q in queues.values()]
        try:
            outcomes = await asyncio.gather(*appliers, return_exceptions=True)
        except BaseException:  # this flush was cancelled: its claims stay in flight
            for task in appliers:
                task.cancel()
            await asyncio.gather(*appliers, return_exceptions=True)
            await _stop(reader, queues)
            raise
        done = [d for o in outcomes if not isinstance(o, BaseException) for d in o]
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            await _stop(reader, queues)  # no lane may be left to take what it reads
        if done:
            await _ack_all(redis, [p for p, _ in done])
            await HOOKS.reach("flush", "acked")
        if failed:
            raise failed[0]
    await reader  # a read that failed after some shards were read: raised now, after their ack
    return [finish(p, applied, started) for p, applied in done]


async def _apply_all(
    engine: AsyncEngine, ready: asyncio.Queue[Prepared | None], span: trace.Span
) -> list[tuple[Prepared, Applied | None]]:
    """One lane: apply the batches it takes from the queue in one transaction, until None."""
    done: list[tuple[Prepared, Applied | None]] = []
    ended = False  # the reader's None taken: nothing more comes to this lane
    try:
        async with engine.begin() as conn:
            while (p := await ready.get()) is not None:
                for link in links_from(p.links):  # each batch's views link to this flush
                    span.add_link(link.context)
                done.append((p, await apply_batch(conn, p.sk, p.claim.batch_id, p.batch)))
            ended = True
            if done:
                await record(
                    conn, [(p.claim.batch_id, p.batch, a) for p, a in done if a is not None]
                )
    except Exception:
        # Rolled back: this lane's batches stay in flight. Keep taking what the reader hands
        # this lane (left in flight too), so the reader never blocks and the other lane ends.
        while not ended and await ready.get() is not None:
            pass
        raise
    if done:
        await HOOKS.reach("flush", "committed")
    return done


async def _read_all(
    redis: aioredis.Redis,
    claims: list[tuple[ShardKeys, Claim]],
    queues: dict[int, asyncio.Queue[Prepared | None]],
) -> None:
    """Read each claimed shard in turn, handing it to its lane; a None per lane ends them."""
    try:
        for sk, c in claims:
            await queues[sk.shard % LANES].put(await prepare(redis, sk, c))
    except asyncio.CancelledError:
        raise  # the flush was cancelled: no lane takes its None
    except BaseException:
        for q in queues.values():  # commit what was applied; flush_many raises this afterwards
            await q.put(None)
        raise
    for q in queues.values():
        await q.put(None)


async def _stop(
    reader: asyncio.Task[None], queues: dict[int, asyncio.Queue[Prepared | None]]
) -> None:
    """Stop the reader after a lane failed (or the flush was cancelled). Its claims stay in
    flight (the next flush resumes them). redis-py can swallow a cancellation, so the queue is
    kept empty until the reader is really done: it must never wait on a put nobody takes."""
    reader.cancel()
    while not reader.done():
        for ready in queues.values():
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


def finish(p: Prepared, applied: Applied | None, started: float) -> FlushResult:
    """The result of one flushed batch, with its metrics and log lines."""
    sk, c = p.sk, p.claim
    lag = max(0.0, time.time() - c.since_ms / 1000) if c.since_ms else 0.0
    if applied is None:
        result = FlushResult(
            sk.name, "already_applied", c.batch_id, p.batch.keys, lag_seconds=lag, resumed=c.resumed
        )
    else:
        dropped = p.batch.keys - applied.rows + p.batch.invalid
        result = FlushResult(
            sk.name, "applied", c.batch_id, p.batch.keys, applied.rows, dropped, lag, c.resumed
        )
        metrics.FLUSH_ROWS.labels(sk.name).inc(applied.rows)
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
