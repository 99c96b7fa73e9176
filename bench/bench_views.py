"""Views durably applied per second, end to end: ours against field report 001's task per view.

Both start from a producer in this process sending views for random posts as fast as it can
(64 concurrent senders) and stop the clock when PostgreSQL (fsync on) has committed every one
of them. Both workers are real processes with the same prefork concurrency (2, one per core).

- ours: `buffer.increment` (the API's ingest call: one Lua HINCRBY into a sharded hash) and
  a real `celery-stack-worker-counters` running `counters.flush`, sent every
  COUNTER_FLUSH_INTERVAL (the production default) as beat would;
- naive (report 001): `update_post_view_count.delay(post_id)` per view (one message each)
  and a real Celery worker running one task per view, one UPDATE + COMMIT each
  (bench/naive_views.py). Run twice: with the broker on our Redis (AOF, appendfsync always,
  where every publish and every pop waits for an fsync) and, generously, on a Redis with
  appendfsync everysec; the ratio is taken against the faster of the two.

Each side gets a workload sized to run for several seconds (ours is much faster, so it gets
more views); the figure is views / (time from the first send to the last view committed).
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.common import ROOT, BenchEnv, Proc, table, verdict
from celery_stack_devstack.servers import RedisServer

POSTS = 1_000
OURS_VIEWS = 150_000
NAIVE_VIEWS = 5_000
SENDERS = 64
CONCURRENCY = 2
TARGET_RATIO = 10.0
TIMEOUT = 300.0


async def _seed(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO posts (author_id, title) "
                "SELECT 'bench', 'post ' || g FROM generate_series(1, :n) AS g"
            ),
            {"n": POSTS},
        )


async def _views(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        total = (await conn.execute(text("SELECT coalesce(sum(views), 0) FROM posts"))).scalar()
        return int(total or 0)


async def _zero(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE posts SET views = 0"))
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE posts"))


async def _wait_views(engine: AsyncEngine, expected: int, timeout: float) -> float:
    """Poll until the committed total reaches `expected`; returns the time it did."""
    deadline = time.monotonic() + timeout
    while True:
        now = time.perf_counter()
        seen = await _views(engine)
        if seen >= expected:
            if seen > expected:
                raise AssertionError(f"{seen} views applied, only {expected} sent")
            return now
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {seen} of {expected} views applied after {timeout}s")
        await asyncio.sleep(0.05)


def _ids(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(1, POSTS) for _ in range(n)]


# --- ours ----------------------------------------------------------------------------------------
async def _ours(env: BenchEnv, engine: AsyncEngine) -> dict[str, float]:
    from celery_stack_core import buffer
    from celery_stack_core.celery_app import make_celery
    from celery_stack_core.redis_client import make_async_redis

    settings = env.settings()
    worker = _start_ours_worker(env)
    redis = make_async_redis(settings)
    beat = make_celery(settings, "bench-beat")
    shards = settings.counters.shards
    try:
        # Warm-up: the worker is up and applies a view (not timed).
        await _zero(engine)
        await buffer.increment(redis, "post", "views", 1, shards=shards)
        deadline = time.monotonic() + 120
        while await _views(engine) < 1:
            _alive(worker)
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker never flushed:\n{worker.output()[-3000:]}")
            beat.send_task("counters.flush")
            await asyncio.sleep(0.5)
        await _zero(engine)

        ids = _ids(OURS_VIEWS, 1)
        stop = asyncio.Event()

        async def beat_loop() -> None:
            while not stop.is_set():
                beat.send_task("counters.flush")
                await asyncio.sleep(settings.counters.flush_interval)

        async def sender(part: list[int]) -> None:
            for target_id in part:
                await buffer.increment(redis, "post", "views", target_id, shards=shards)

        started = time.perf_counter()
        ticker = asyncio.create_task(beat_loop())
        await asyncio.gather(*(sender(ids[i::SENDERS]) for i in range(SENDERS)))
        sent = time.perf_counter()
        done = await _wait_views(engine, OURS_VIEWS, TIMEOUT)
        stop.set()
        await ticker
        _alive(worker)
        return {
            "views": OURS_VIEWS,
            "seconds": done - started,
            "rate": OURS_VIEWS / (done - started),
            "send_rate": OURS_VIEWS / (sent - started),
            "tail": done - sent,
        }
    finally:
        await redis.aclose()
        beat.close()
        worker.stop()


def _start_ours_worker(env: BenchEnv) -> Proc:
    run = env.work_dir / "views-ours"
    run.mkdir(exist_ok=True)
    return env.start(
        "worker-counters",
        [env.bin("celery-stack-worker-counters"), "--concurrency", str(CONCURRENCY)],
        env.child_env(
            PROMETHEUS_MULTIPROC_DIR=str(run / "prometheus"),
            WORKER_HEARTBEAT_FILE=str(run / "alive"),
        ),
    )


# --- naive (report 001) -------------------------------------------------------------------------
def _start_naive_worker(env: BenchEnv, broker: str) -> Proc:
    from bench.naive_views import QUEUE

    envvars = env.child_env(REDIS_URL=broker)
    envvars["PYTHONPATH"] = str(ROOT)
    return env.start(
        "worker-naive",
        [
            env.python,
            "-m",
            "celery",
            "-A",
            "bench.naive_views",
            "worker",
            "-Q",
            QUEUE,
            "--concurrency",
            str(CONCURRENCY),
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
        ],
        envvars,
    )


async def _naive(env: BenchEnv, engine: AsyncEngine, broker: str) -> dict[str, float]:
    from celery import Celery

    from bench.naive_views import QUEUE, TASK

    worker = _start_naive_worker(env, broker)
    # The web process's side of the report's design: a Celery client that publishes one
    # message per view (what `update_post_view_count.delay(post_id)` does).
    client = Celery("naive-client", broker=broker, set_as_current=False)
    client.conf.update(task_serializer="json", accept_content=["json"])
    try:
        await _zero(engine)
        client.send_task(TASK, (1,), queue=QUEUE)
        deadline = time.monotonic() + 120
        while await _views(engine) < 1:
            _alive(worker)
            if time.monotonic() > deadline:
                raise TimeoutError(f"naive worker applied nothing:\n{worker.output()[-3000:]}")
            await asyncio.sleep(0.2)
        await _zero(engine)

        ids = _ids(NAIVE_VIEWS, 2)
        started = time.perf_counter()
        # Synchronous, as the report's routes called .delay() inline per request.
        with client.producer_or_acquire() as producer:
            for target_id in ids:
                client.send_task(TASK, (target_id,), queue=QUEUE, producer=producer)
        sent = time.perf_counter()
        done = await _wait_views(engine, NAIVE_VIEWS, TIMEOUT)
        _alive(worker)
        return {
            "views": NAIVE_VIEWS,
            "seconds": done - started,
            "rate": NAIVE_VIEWS / (done - started),
            "send_rate": NAIVE_VIEWS / (sent - started),
            "tail": done - sent,
        }
    finally:
        worker.stop()
        client.close()


def _alive(proc: Proc) -> None:
    if not proc.alive():
        raise RuntimeError(f"{proc.name} exited:\n{proc.output()[-3000:]}")


async def _run(env: BenchEnv) -> dict[str, float]:
    from celery_stack_core.db import make_engine

    engine = make_engine(env.settings())
    try:
        await _seed(engine)
        ours = await _ours(env, engine)
        print(f"  ours: {ours['rate']:,.0f} views/s", flush=True)
        naive = await _naive(env, engine, env.redis_url)
        print(f"  naive: {naive['rate']:,.0f} views/s", flush=True)
        # The report's Redis was hardly run with appendfsync always: give the naive design a
        # broker with `everysec` too, and take the ratio against the faster of the two.
        lax = RedisServer(env.work_dir / "redis-everysec", appendfsync="everysec").start()
        try:
            naive_lax = await _naive(env, engine, lax.url)
        finally:
            lax.stop()
        print(f"  naive (everysec broker): {naive_lax['rate']:,.0f} views/s", flush=True)
    finally:
        await engine.dispose()
    best_naive = max(naive["rate"], naive_lax["rate"])
    ratio = ours["rate"] / best_naive
    rows: list[list[Any]] = [
        [
            label,
            f"{int(r['views']):,}",
            r["seconds"],
            r["send_rate"],
            r["tail"],
            r["rate"],
        ]
        for label, r in (
            ("ours (buffer + flush)", ours),
            ("naive (task per view)", naive),
            ("naive, everysec broker", naive_lax),
        )
    ]
    print(
        table(
            f"views durably applied, end to end ({POSTS:,} posts, {SENDERS} senders, "
            f"workers --concurrency {CONCURRENCY})",
            ["design", "views", "seconds", "sent/s", "tail s", "applied/s"],
            rows,
        )
    )
    print(
        f"ratio against the faster naive {ratio:.1f}x (against naive on the same Redis "
        f"{ours['rate'] / naive['rate']:.1f}x); target >= {TARGET_RATIO:.0f}x: "
        f"{verdict(ratio >= TARGET_RATIO)}"
    )
    return {
        "ours_applied_per_s": ours["rate"],
        "naive_applied_per_s": naive["rate"],
        "naive_everysec_applied_per_s": naive_lax["rate"],
        "ratio": ratio,
        "ours_sent_per_s": ours["send_rate"],
        "naive_sent_per_s": naive["send_rate"],
        "ours_tail_s": ours["tail"],
        "naive_tail_s": naive["tail"],
    }


def run(env: BenchEnv) -> dict[str, float]:
    return asyncio.run(_run(env))
