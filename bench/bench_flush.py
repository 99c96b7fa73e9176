"""Flush: our exactly-once batched flush against field report 000's per-key sync.

Both move the same buffered view increments (n distinct post ids, random deltas) from our
Redis (AOF, appendfsync always) into PostgreSQL (fsync on), over the same driver stack
(SQLAlchemy async + asyncpg, redis-py asyncio):

- ours: `flush_all` -> per shard under its lease: Lua claim, HSCAN, one transaction with the
  ledger insert and one `UPDATE ... FROM unnest(ids, deltas)`, COMMIT, Lua ack;
- naive (report 000): `KEYS views:post:*`, then per key `GET`, `DEL` (before the write is
  committed: the lost-count bug) and one `UPDATE` in autocommit.

Loading the buffers is not timed; each timed run is checked (every delta in PostgreSQL, the
buffers empty), so a fast wrong flush cannot score.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import redis.asyncio as aioredis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.common import BenchEnv, median, table, verdict

SIZES = (1_000, 10_000, 50_000)
OURS_REPEATS = 3  # ours is fast enough to take the median of a few runs
TARGET_ROWS_PER_S = 150_000
TARGET_RATIO = 40.0
NAIVE_PATTERN = "views:post:*"


async def _seed_posts(engine: AsyncEngine, n: int) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO posts (author_id, title) "
                "SELECT 'bench', 'post ' || g FROM generate_series(1, :n) AS g"
            ),
            {"n": n},
        )
    await _vacuum(engine)


async def _vacuum(engine: AsyncEngine) -> None:
    """Every timed run starts from the same table state: the steady state autovacuum keeps
    (dead versions of earlier runs pruned), not the bloat of the previous run."""
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE posts"))
        await conn.execute(text("VACUUM ANALYZE counter_batches"))
        await conn.execute(text("CHECKPOINT"))


async def _total_views(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        total = (await conn.execute(text("SELECT coalesce(sum(views), 0) FROM posts"))).scalar()
        return int(total or 0)


def _deltas(n: int, rng: random.Random) -> dict[int, int]:
    return {i: rng.randint(1, 5) for i in rng.sample(range(1, n + 1), n)}


# --- ours ----------------------------------------------------------------------------------------
async def _load_ours(redis: aioredis.Redis, deltas: dict[int, int], shards: int) -> None:
    """What ingest leaves behind: the ids spread over the live shard hashes (HINCRBY)."""
    from celery_stack_core import keys

    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        for n, (target_id, delta) in enumerate(deltas.items(), 1):
            sk = keys.ShardKeys("post", "views", keys.shard_of(target_id, shards))
            pipe.hincrby(sk.live, str(target_id), delta)
            pipe.set(sk.live_since, now_ms, nx=True)
            if n % 5000 == 0:
                await pipe.execute()
        await pipe.execute()


async def _flush_ours(redis: aioredis.Redis, engine: AsyncEngine, shards: int) -> int:
    from celery_stack_counters.flush_all import flush_all

    results = await flush_all(redis, engine, shards=shards, owner="bench", lease_ttl=30)
    return sum(r.applied for r in results)


# --- naive (report 000) -------------------------------------------------------------------------
async def _load_naive(redis: aioredis.Redis, deltas: dict[int, int]) -> None:
    """One key per object, as report 000's ingest wrote them."""
    async with redis.pipeline(transaction=False) as pipe:
        for n, (target_id, delta) in enumerate(deltas.items(), 1):
            pipe.incrby(f"views:post:{target_id}", delta)
            if n % 5000 == 0:
                await pipe.execute()
        await pipe.execute()


async def _flush_naive(redis: aioredis.Redis, engine: AsyncEngine) -> int:
    applied = 0
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        for key in await redis.keys(NAIVE_PATTERN):  # the naive design: KEYS, on purpose
            value = await redis.get(key)
            if value is None:
                continue
            await redis.delete(key)  # before the write is committed: report 000's bug
            res = await conn.execute(
                text("UPDATE posts SET views = views + :d WHERE id = :id"),
                {"d": int(value), "id": int(str(key).rsplit(":", 1)[1])},
            )
            applied += res.rowcount
    return applied


async def _timed(
    label: str, n: int, expected: int, engine: AsyncEngine, redis: aioredis.Redis, flush: Any
) -> float:
    await _vacuum(engine)
    before = await _total_views(engine)
    started = time.perf_counter()
    applied = await flush()
    elapsed = time.perf_counter() - started
    after = await _total_views(engine)
    left = await redis.dbsize()
    if applied != n or after - before != expected:
        raise AssertionError(
            f"{label} at {n}: applied {applied} rows and {after - before} views, "
            f"expected {n} rows and {expected} views"
        )
    # ours keeps only leases/owner records; the buffers themselves must be gone
    if label == "naive" and left:
        raise AssertionError(f"naive left {left} keys")
    return elapsed


async def _run(env: BenchEnv) -> dict[str, float]:
    from celery_stack_core.db import make_engine
    from celery_stack_core.redis_client import make_async_redis

    settings = env.settings()
    shards = settings.counters.shards
    engine = make_engine(settings)
    redis = make_async_redis(settings)
    rng = random.Random(42)
    figures: dict[str, float] = {}
    rows: list[list[Any]] = []
    try:
        await _seed_posts(engine, max(SIZES))
        for n in SIZES:
            deltas = _deltas(n, rng)
            expected = sum(deltas.values())
            ours: list[float] = []
            for _ in range(OURS_REPEATS):
                await redis.flushdb()
                await _load_ours(redis, deltas, shards)
                ours.append(
                    await _timed(
                        "ours",
                        n,
                        expected,
                        engine,
                        redis,
                        lambda: _flush_ours(redis, engine, shards),
                    )
                )
            left = [k for k in await redis.keys("cs:cnt:*")]  # a check on our side, not the flush
            if left:
                raise AssertionError(f"ours left counter keys behind: {left[:5]}")
            await redis.flushdb()
            await _load_naive(redis, deltas)
            naive = await _timed(
                "naive", n, expected, engine, redis, lambda: _flush_naive(redis, engine)
            )
            ours_rate = n / median(ours)
            naive_rate = n / naive
            ratio = ours_rate / naive_rate
            figures[f"ours_rows_per_s_{n}"] = ours_rate
            figures[f"naive_rows_per_s_{n}"] = naive_rate
            figures[f"ratio_{n}"] = ratio
            figures[f"ours_seconds_{n}"] = median(ours)
            figures[f"naive_seconds_{n}"] = naive
            rows.append([f"{n:,}", median(ours), ours_rate, naive, naive_rate, f"{ratio:.1f}x"])
            print(
                f"  {n:,} keys: ours {ours_rate:,.0f} rows/s, naive {naive_rate:,.0f} rows/s",
                flush=True,
            )
    finally:
        await redis.aclose()
        await engine.dispose()

    print(
        table(
            f"flush: ours (flush_all, {shards} shards) vs report 000 (KEYS + per-key UPDATE)",
            ["keys", "ours s", "ours rows/s", "naive s", "naive rows/s", "ratio"],
            rows,
        )
    )
    big = max(SIZES)
    rate_ok = figures[f"ours_rows_per_s_{big}"] >= TARGET_ROWS_PER_S
    ratio_ok = figures[f"ratio_{big}"] >= TARGET_RATIO
    print(
        f"targets at {big:,} keys: ours >= {TARGET_ROWS_PER_S:,} rows/s: {verdict(rate_ok)}; "
        f">= {TARGET_RATIO:.0f}x naive: {verdict(ratio_ok)}"
    )
    return figures


def run(env: BenchEnv) -> dict[str, float]:
    return asyncio.run(_run(env))
