"""Dispatch latency: POST -> scan started, our transactional outbox against field report 004.

- ours: a real `celery-stack-api` process and a real `celery-stack-worker-scans` (2 children).
  `POST /api/v1/scans` commits the scan + outbox row and publishes right after COMMIT; the
  worker claims the row (`started_at = now()`). Latency = started_at - the moment the client
  sent the POST.
- report 004 as written (bench/dispatch_naive.py): lock, INSERT + COMMIT + refresh, marker,
  `send_task(countdown=2)`; its worker checks marker + row (shared Redis client, pooled
  session, retries), then runs the same `run_scan`, whose claim sets started_at. Its producer
  runs in this process without HTTP, which only flatters it.

Two loads for each, on the same PostgreSQL (fsync on) and Redis (AOF always), one clock:
a steady 5 scans/s (dispatch itself), and a burst of BURST scans posted as fast as 32
concurrent clients can (queueing: how the tail grows when work arrives at once). Both workers
have 2 processes and scan the same local demo site.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import httpx

from bench.common import (
    BenchEnv,
    Proc,
    percentile,
    pg_dsn,
    sized,
    start_api,
    start_celery_worker,
    table,
    wait_for,
)
from celery_stack_devstack.servers import free_port

PACED = sized(100, 20)
RATE = 5.0  # scans per second: below saturation, so the paced load measures dispatch
BURST = sized(2_000, 100)
BURST_CLIENTS = 32
MEASURES = ("services/api", "services/worker-scans", "libs/core", "bench/bench_dispatch.py")
TARGETS = {
    "ours_paced_p50_ms": ("<=", 20.0, f"dispatch at {RATE:g}/s: POST -> started p50 (ms)"),
    "ours_paced_p99_ms": ("<=", 100.0, f"dispatch at {RATE:g}/s: POST -> started p99 (ms)"),
}
COMPARISONS = {
    "report004_over_ours_paced_p50": (
        "report004_paced_p50_ms",
        "ours_paced_p50_ms",
        f"dispatch at {RATE:g}/s, p50: report 004 / ours",
    ),
    "report004_over_ours_burst_p50": (
        "report004_burst_p50_ms",
        "ours_burst_p50_ms",
        f"dispatch, burst of {BURST:,}, p50: report 004 / ours",
    ),
    "report004_over_ours_burst_p99": (
        "report004_burst_p99_ms",
        "ours_burst_p99_ms",
        f"dispatch, burst of {BURST:,}, p99: report 004 / ours",
    ),
}
Create = Callable[[], Awaitable[str]]


async def _started(
    dsn: str, ids: list[str], timeout: float, worker: Proc | None = None
) -> dict[str, float]:
    """started_at (epoch seconds) of every id, waiting until all have one (or the timeout).
    With `worker`: a traceback in its log (a task that fails) ends the wait with an error."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if worker is not None:
                _healthy(worker)
            rows = await conn.fetch(
                "SELECT id, EXTRACT(EPOCH FROM started_at) AS t FROM scans "
                "WHERE id = ANY($1::uuid[]) AND started_at IS NOT NULL",
                [uuid.UUID(i) for i in ids],
            )
            if len(rows) == len(ids) or time.monotonic() > deadline:
                return {str(r["id"]): float(r["t"]) for r in rows}
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def _durations(dsn: str, ids: list[str], timeout: float) -> list[float]:
    """finished_at - started_at (ms) of every scan, waiting until all have finished."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while True:
            rows = await conn.fetch(
                "SELECT EXTRACT(EPOCH FROM finished_at - started_at) * 1000 AS ms FROM scans "
                "WHERE id = ANY($1::uuid[]) AND finished_at IS NOT NULL",
                [uuid.UUID(i) for i in ids],
            )
            if len(rows) == len(ids) or time.monotonic() > deadline:
                return [float(r["ms"]) for r in rows]
            await asyncio.sleep(0.2)
    finally:
        await conn.close()


async def _paced(create: Create, n: int) -> dict[str, float]:
    sent: dict[str, float] = {}

    async def one() -> None:
        t = time.time()
        sent[await create()] = t

    tasks = []
    for _ in range(n):
        tasks.append(asyncio.create_task(one()))
        await asyncio.sleep(1 / RATE)
    await asyncio.gather(*tasks)
    return sent


async def _burst(create: Create, n: int) -> dict[str, float]:
    sent: dict[str, float] = {}
    left = iter(range(n))

    async def client() -> None:
        for _ in left:
            t = time.time()
            sent[await create()] = t

    await asyncio.gather(*(client() for _ in range(BURST_CLIENTS)))
    return sent


async def _measure(env: BenchEnv, label: str, create: Create) -> dict[str, float]:
    out: dict[str, float] = {}
    for load, n in (("paced", PACED), ("burst", BURST)):
        started_at = time.monotonic()
        sent = await (_paced(create, n) if load == "paced" else _burst(create, n))
        posting = time.monotonic() - started_at
        started = await _started(pg_dsn(env.database_url), list(sent), 120 + n / 5)
        lat = [(started[i] - t) * 1000 for i, t in sent.items() if i in started]
        # Both workers run the same scan: its duration shows they did the same work.
        ran = await _durations(pg_dsn(env.database_url), list(sent), 60)
        out.update(
            {
                f"{label}_{load}_p50_ms": percentile(lat, 50),
                f"{label}_{load}_p99_ms": percentile(lat, 99),
                f"{label}_{load}_max_ms": max(lat, default=float("nan")),
                f"{label}_{load}_started": float(len(lat)),
                f"{label}_{load}_sent": float(n),
                f"{label}_{load}_posting_s": posting,
                f"{label}_{load}_scan_p50_ms": percentile(ran, 50),
                f"{label}_{load}_finished": float(len(ran)),
            }
        )
        print(
            f"  {label} {load}: {len(lat)}/{n} started, p50 {out[f'{label}_{load}_p50_ms']:.0f} "
            f"ms, p99 {out[f'{label}_{load}_p99_ms']:.0f} ms",
            flush=True,
        )
    return out


def _healthy(worker: Proc) -> None:
    """Raise with its log when the worker died or a task raised: the scans it should start
    never will, and waiting for them only hides why (a run_scan signature change once made
    every report 004 task fail, so each phase waited out its timeout: 0/20 started, 500+ s)."""
    worker.check()
    log = worker.output()
    if "Traceback" in log:
        raise RuntimeError(f"{worker.name}: a task failed:\n{log[-3000:]}")


async def _warm(env: BenchEnv, create: Create, worker: Proc) -> None:
    """Connections, and each worker process's imports, engine and loop: not timed. Every
    warm-up scan must start, or the run stops here."""
    ids = [await create() for _ in range(6)]
    started = await _started(pg_dsn(env.database_url), ids, 120, worker)
    if len(started) < len(ids):
        raise RuntimeError(
            f"{len(started)}/{len(ids)} warm-up scans started in 120 s:\n{worker.output()[-3000:]}"
        )
    await _durations(pg_dsn(env.database_url), ids, 60)


async def _ours(env: BenchEnv, base: str, body: dict[str, Any], worker: Proc) -> dict[str, float]:
    async with httpx.AsyncClient(
        base_url=base,
        headers={"Authorization": "Bearer dev-user-token", "X-User-Id": "bench"},
        timeout=60,
        # below uvicorn's 5 s keep-alive timeout: never reuse a connection the server is closing
        limits=httpx.Limits(max_connections=BURST_CLIENTS, keepalive_expiry=2.0),
    ) as client:

        async def create() -> str:
            r = await client.post("/api/v1/scans", json=body)
            r.raise_for_status()
            return str(r.json()["id"])

        await _warm(env, create, worker)
        return await _measure(env, "ours", create)


async def _report004(env: BenchEnv, config: dict[str, Any], worker: Proc) -> dict[str, float]:
    from sqlalchemy.ext.asyncio import AsyncSession

    from bench import dispatch_naive
    from celery_stack_core.db import make_engine
    from celery_stack_core.redis_client import make_async_redis

    settings = env.settings()
    dispatch_naive.app.conf.broker_url = env.redis_url
    engine = make_engine(settings)
    redis = make_async_redis(settings)

    async def create() -> str:
        async with AsyncSession(engine, expire_on_commit=False) as session:
            return await dispatch_naive.create(session, redis, "demo.localtest", config)

    try:
        await _warm(env, create, worker)
        return await _measure(env, "report004", create)
    finally:
        await redis.aclose()
        await engine.dispose()


def _config_of_a_scan(env: BenchEnv) -> dict[str, Any]:
    async def one() -> dict[str, Any]:
        conn = await asyncpg.connect(pg_dsn(env.database_url))
        try:
            raw = await conn.fetchval("SELECT config::text FROM scans LIMIT 1")
            return dict(json.loads(raw))
        finally:
            await conn.close()

    return asyncio.run(one())


def run(env: BenchEnv) -> dict[str, float]:
    from celery_stack_scans.demo_site import DemoSite, SiteOptions

    site = DemoSite(opts=SiteOptions(slow=0.0))
    scanner = {
        # the scanner may reach the local demo site, and only it
        "SCANNER_ALLOW_PRIVATE_CIDRS": "127.0.0.1/32",
        "SCANNER_RESOLVE": json.dumps({"demo.localtest": ["127.0.0.1"]}),
    }
    body = {
        "domain": "demo.localtest",
        "config": {"http_port": site.http_port, "https_port": free_port(), "max_pages": 1},
    }
    try:
        api, base = start_api(env, **scanner)
        alive = env.work_dir / "scans.alive"
        worker: Proc = env.start(
            "worker-scans",
            [env.bin("celery-stack-worker-scans"), "--concurrency", "2"],
            env.child_env(WORKER_HEARTBEAT_FILE=str(alive), **scanner),
        )
        wait_for(lambda: worker.check() or alive.exists(), 90, "worker-scans consuming")
        figures = asyncio.run(_ours(env, base, body, worker))
        config = _config_of_a_scan(env)
        api.stop()
        worker.stop()

        from bench.dispatch_naive import QUEUE

        naive = start_celery_worker(
            env, "bench.dispatch_naive", QUEUE, concurrency=2, prefetch=4, **scanner
        )
        time.sleep(3)  # let it connect
        naive.check()
        figures.update(asyncio.run(_report004(env, config, naive)))
    finally:
        site.close()

    for key, (num, den, _) in COMPARISONS.items():
        figures[key] = figures[num] / figures[den]
    rows = [
        [
            f"{label}, {load}",
            figures[f"{side}_{load}_p50_ms"],
            figures[f"{side}_{load}_p99_ms"],
            figures[f"{side}_{load}_max_ms"],
            f"{figures[f'{side}_{load}_started']:.0f}/{figures[f'{side}_{load}_sent']:.0f}",
            figures[f"{side}_{load}_scan_p50_ms"],
        ]
        for side, label in (("ours", "ours (outbox)"), ("report004", "report 004 as written"))
        for load in ("paced", "burst")
    ]
    print(
        table(
            f"dispatch: POST -> started (paced: {PACED} at {RATE:g}/s; burst: {BURST:,} from "
            f"{BURST_CLIENTS} clients)",
            ["design, load", "p50 ms", "p99 ms", "max ms", "started", "scan p50 ms"],
            rows,
        )
    )
    return figures
