"""Flush: four ways to move the same buffered view increments into PostgreSQL, in one run.

n distinct post ids with random deltas, on the same PostgreSQL (fsync on) and Redis (AOF,
appendfsync always); each timed run starts from a VACUUMed table and is checked (every delta in
PostgreSQL, the buffers empty), so a fast wrong flush cannot score.

- **report 000 as written** (bench/flush_report000.py): a lock, `KEYS views:post:*`, then per key
  GET, one ORM UPDATE and DEL in one session, ONE `db.commit()` after the loop; sync SQLAlchemy
  + psycopg + redis-py, as the report's Celery task ran.
- **report 000's own fix** (same file): SCAN (COUNT 100, the report's snippet), the values with
  one MGET per SCAN batch, one bulk `UPDATE ... FROM unnest`, COMMIT, then DEL: the report's
  three suggestions done well.
- **ours**: `flush_all` over every shard (docs/counters.md "Flush"): the leases and the Lua
  claims in one round trip each, two transactions side by side with, per shard, the packed
  in-flight read (overlapping PostgreSQL's work on the previous shards) and one statement
  holding the ledger insert and `UPDATE ... FROM unnest`, then per transaction the ledger
  figures and COMMIT, the Lua acks pipelined.
- **bare statement**: the floor nothing above it can beat: one transaction with one
  `UPDATE ... FROM unnest($1, $2)` on arrays already built (sorted), straight from asyncpg.

Ours, the fix and bare are the median of OURS_REPEATS runs; report 000 runs once per size (it
is slow). A last, instrumented run of ours at the largest size says where its time goes.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from bench import flush_report000
from bench.common import (
    BenchEnv,
    load_live_buffers,
    median,
    pg_dsn,
    prepare_posts,
    seed_posts,
    sized,
    table,
    total_views,
)
from bench.flush_breakdown import Breakdown

SIZES: tuple[int, ...] = sized((1_000, 10_000, 50_000), (1_000, 5_000))
# Report 000 is slow (one round trip per key each way) and its rate does not depend on n:
# measured at 10k keys, where ours is measured on the same data too.
REPORT000_SIZES: tuple[int, ...] = sized((10_000,), (1_000,))
OURS_REPEATS = sized(3, 1)
BIG = max(SIZES)
MEASURES = ("services/worker-counters", "libs/core", "bench/bench_flush.py")
TARGETS = {
    f"ours_over_bare_{BIG}": (">=", 0.7, f"ours / bare statement, {BIG:,} keys"),
    f"ours_rows_per_s_{BIG}": (">=", 150_000, f"ours rows/s at {BIG:,} keys"),
}
COMPARISONS = {
    f"ours_over_bare_{BIG}": (
        f"ours_rows_per_s_{BIG}",
        f"bare_rows_per_s_{BIG}",
        f"flush {BIG:,} keys: ours / bare statement (rows/s)",
    ),
    f"ours_over_report_fix_{BIG}": (
        f"ours_rows_per_s_{BIG}",
        f"report_fix_rows_per_s_{BIG}",
        f"flush {BIG:,} keys: ours / report 000's own fix",
    ),
    f"ours_over_report000_{max(REPORT000_SIZES)}": (
        f"ours_rows_per_s_{max(REPORT000_SIZES)}",
        f"report000_rows_per_s_{max(REPORT000_SIZES)}",
        f"flush {max(REPORT000_SIZES):,} keys: ours / report 000 as written",
    ),
}
BARE_SQL = (  # the statement is the point here: the floor under every design
    "UPDATE posts AS t SET views = t.views + d.delta "
    "FROM unnest($1::bigint[], $2::bigint[]) AS d(id, delta) WHERE t.id = d.id"
)


def _deltas(n: int, rng: random.Random, posts: int) -> dict[int, int]:
    return {i: rng.randint(1, 5) for i in rng.sample(range(1, posts + 1), n)}


async def _timed(
    env: BenchEnv,
    label: str,
    deltas: dict[int, int],
    load: Callable[[], Awaitable[None]],
    flush: Callable[[], Awaitable[Any]],
) -> float:
    await load()
    await prepare_posts(env)
    before = await total_views(env)
    started = time.perf_counter()
    await flush()
    elapsed = time.perf_counter() - started
    got = await total_views(env) - before
    if got != sum(deltas.values()):
        raise AssertionError(f"{label}: {got} views applied, expected {sum(deltas.values())}")
    return elapsed


async def _bare(conn: asyncpg.Connection, ids: list[int], values: list[int]) -> None:
    """The arrays are built and the connection is open before the clock starts."""
    async with conn.transaction():
        await conn.execute(BARE_SQL, ids, values)


async def _assert_drained(redis: Any, n: int) -> None:
    """Every side flushed every buffer it was given (a side that leaves some wins unfairly)."""
    if await redis.dbsize():
        left = [k async for k in redis.scan_iter(count=1000)]
        # the claim generation (":gen") is never deleted: it is not a buffer
        buffers = [
            k for k in left if k.startswith(("views:", "cs:cnt:")) and not k.endswith(":gen")
        ]
        if buffers:
            raise AssertionError(f"buffers left behind after {n}: {buffers[:5]}")


async def _run(env: BenchEnv) -> dict[str, float]:
    import redis.asyncio as aioredis

    from celery_stack_core.db import make_engine
    from celery_stack_counters.flush_all import flush_all

    settings = env.settings()
    shards = settings.counters.shards
    engine = make_engine(settings)
    redis = aioredis.Redis.from_url(env.redis_url, decode_responses=True)
    rng = random.Random(42)
    figures: dict[str, float] = {}
    out: list[list[Any]] = []
    await seed_posts(env, BIG)
    bare = await asyncpg.connect(pg_dsn(env.database_url))

    async def ours() -> None:
        await flush_all(redis, engine, shards=shards, owner="bench", lease_ttl=30)

    try:
        for n in SIZES:
            deltas = _deltas(n, rng, BIG)
            live = lambda d=deltas: load_live_buffers(redis, d, shards)  # noqa: E731
            per_key = lambda d=deltas: flush_report000.load(env.redis_url, d)  # noqa: E731
            nothing = lambda: asyncio.sleep(0)  # noqa: E731
            ids = sorted(deltas)
            values = [deltas[i] for i in ids]
            sides: dict[str, list[float]] = {"ours": [], "report_fix": [], "bare": []}
            for _ in range(OURS_REPEATS):
                sides["ours"].append(await _timed(env, "ours", deltas, live, ours))
                sides["bare"].append(
                    await _timed(
                        env, "bare", deltas, nothing, lambda a=ids, v=values: _bare(bare, a, v)
                    )
                )
                sides["report_fix"].append(
                    await _timed(
                        env,
                        "report_fix",
                        deltas,
                        per_key,
                        lambda: asyncio.to_thread(flush_report000.flush_fixed, env),
                    )
                )
            if n in REPORT000_SIZES:
                sides["report000"] = [
                    await _timed(
                        env,
                        "report000",
                        deltas,
                        per_key,
                        lambda: asyncio.to_thread(flush_report000.flush_as_written, env),
                    )
                ]
            await _assert_drained(redis, n)
            for side, secs in sides.items():
                figures[f"{side}_seconds_{n}"] = median(secs)
                figures[f"{side}_rows_per_s_{n}"] = n / median(secs)
            ours_n = figures[f"ours_rows_per_s_{n}"]
            out.append(
                [
                    f"{n:,}",
                    *(
                        figures.get(f"{s}_rows_per_s_{n}", float("nan"))
                        for s in ("report000", "report_fix", "ours", "bare")
                    ),
                    f"{ours_n / figures[f'bare_rows_per_s_{n}']:.2f}x",
                    f"{ours_n / figures[f'report_fix_rows_per_s_{n}']:.1f}x",
                ]
            )
            print(f"  {n:,} keys done", flush=True)

        # Where ours spends its time: one more run, instrumented (not one of the timed runs).
        deltas = _deltas(BIG, rng, BIG)
        await load_live_buffers(redis, deltas, shards)
        await prepare_posts(env)
        with Breakdown(redis, engine) as spent:
            await ours()
        figures.update({f"ours_breakdown_{k}_s": v for k, v in spent.figures().items()})
        print(spent.table(f"where ours spends its time, {BIG:,} keys, {shards} shards"))
    finally:
        await bare.close()
        await redis.aclose()
        await engine.dispose()

    print(
        table(
            f"flush rows/s (same data, same servers; {shards} shards for ours)",
            ["keys", "report 000", "report's fix", "ours", "bare UPDATE", "ours/bare", "ours/fix"],
            out,
        )
    )
    for key, (num, den, what) in COMPARISONS.items():
        figures[key] = figures[num] / figures[den]
        print(f"  {what}: {figures[key]:.2f}x")
    return figures


def run(env: BenchEnv) -> dict[str, float]:
    return asyncio.run(_run(env))
