"""Dispatch latency: POST -> task running, our transactional outbox against field report 004.

- ours: a real `celery-stack-api` process and a real `celery-stack-worker-scans` (2 children).
  `POST /api/v1/scans` commits the scan + outbox row, publishes right after COMMIT; the worker
  claims the row (status running, `started_at = now()`). Latency = started_at - the moment
  the client sent the POST.
- naive (report 004, bench/dispatch_naive.py): lock, INSERT + COMMIT, `task_created` marker,
  `send_task(countdown=2)`; the worker checks marker + row (with retries), then marks it
  running. Its producer runs in this process without HTTP, which only flatters it.

Both run on the same PostgreSQL (fsync on) and Redis (AOF always), at the same request rate,
and both start from one clock (this machine's), so the figures are comparable.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import asyncpg
import httpx
import redis

from bench.common import ROOT, BenchEnv, http_ok, percentile, pg_dsn, table, verdict, wait_for
from celery_stack_devstack.servers import free_port

N = 100
RATE = 5.0  # requests per second, for both designs: below saturation, so we measure dispatch
TARGET_P50_MS = 20.0
TARGET_P99_MS = 100.0


async def _started(dsn: str, ids: list[str], timeout: float) -> dict[str, float]:
    """started_at (epoch seconds) of every id, waiting until all have one."""
    conn = await asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + timeout
        while True:
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


async def _ours(
    base: str, site_port: int, closed_port: int, post_ms: list[float]
) -> dict[str, float]:
    sent: dict[str, float] = {}
    body = {
        "domain": "demo.localtest",
        "config": {"http_port": site_port, "https_port": closed_port, "max_pages": 1},
    }
    async with httpx.AsyncClient(
        base_url=base,
        headers={"Authorization": "Bearer dev-user-token", "X-User-Id": "bench"},
        timeout=30,
    ) as client:
        # warm up connections and the worker's per-process engine/loop
        for _ in range(4):
            await client.post("/api/v1/scans", json=body)
        await asyncio.sleep(1.0)
        tasks = []

        async def one() -> None:
            t = time.time()
            r = await client.post("/api/v1/scans", json=body)
            r.raise_for_status()
            sent[r.json()["id"]] = t
            post_ms.append((time.time() - t) * 1000)

        for _ in range(N):
            tasks.append(asyncio.create_task(one()))
            await asyncio.sleep(1 / RATE)
        await asyncio.gather(*tasks)
    return sent


async def _naive(env: BenchEnv) -> dict[str, float]:
    from bench import dispatch_naive

    dispatch_naive.app.conf.broker_url = env.redis_url
    r = redis.Redis.from_url(env.redis_url)
    conn = await asyncpg.connect(pg_dsn(env.database_url))
    sent: dict[str, float] = {}
    try:
        for _ in range(N):
            t = time.time()
            sid = await dispatch_naive.create(conn, r, "demo.localtest")
            sent[sid] = t
            await asyncio.sleep(max(0.0, 1 / RATE - (time.time() - t)))
    finally:
        await conn.close()
        r.close()
    return sent


def _latencies(sent: dict[str, float], started: dict[str, float]) -> list[float]:
    return [(started[i] - t) * 1000 for i, t in sent.items() if i in started]


def run(env: BenchEnv) -> dict[str, float]:
    from celery_stack_scans.demo_site import DemoSite, SiteOptions

    site = DemoSite(opts=SiteOptions(slow=0.0))
    dsn = pg_dsn(env.database_url)
    child = {
        **env.child_env(LOG_LEVEL="WARNING"),
        # the scanner may reach the local demo site, and only it
        "SCANNER_ALLOW_PRIVATE_CIDRS": "127.0.0.1/32",
        "SCANNER_RESOLVE": json.dumps({"demo.localtest": ["127.0.0.1"]}),
    }
    try:
        # --- ours ---------------------------------------------------------------------------------
        port = free_port()
        env.start(
            "api",
            [env.bin("celery-stack-api"), "serve", "--host", "127.0.0.1", "--port", str(port)],
            child,
        )
        alive = env.work_dir / "scans.alive"
        env.start(
            "worker-scans",
            [env.bin("celery-stack-worker-scans"), "--concurrency", "2"],
            {**child, "WORKER_HEARTBEAT_FILE": str(alive)},
        )
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: http_ok(f"{base}/healthz"), 60, "api up")
        wait_for(alive.exists, 90, "worker-scans consuming")
        post_ms: list[float] = []
        sent = asyncio.run(_ours(base, site.http_port, free_port(), post_ms))
        started = asyncio.run(_started(dsn, list(sent), 60))
        ours = _latencies(sent, started)

        # --- naive (report 004) -----------------------------------------------------------
        naive_alive = env.start(
            "naive-worker",
            [
                env.python,
                "-m",
                "celery",
                "-A",
                "bench.dispatch_naive",
                "worker",
                "-Q",
                "naive",
                "--concurrency",
                "2",
                "--loglevel",
                "WARNING",
            ],
            {**child, "PYTHONPATH": str(ROOT)},
        )
        time.sleep(3)  # let it connect
        assert naive_alive.alive(), naive_alive.output()[-2000:]
        naive_sent = asyncio.run(_naive(env))
        naive_started = asyncio.run(_started(dsn, list(naive_sent), 60))
        naive = _latencies(naive_sent, naive_started)
    finally:
        site.close()

    figures = {
        "ours_p50_ms": percentile(ours, 50),
        "ours_p99_ms": percentile(ours, 99),
        "ours_max_ms": max(ours) if ours else float("nan"),
        "ours_started": float(len(ours)),
        "ours_post_response_p50_ms": percentile(post_ms, 50),
        "naive_p50_ms": percentile(naive, 50),
        "naive_p99_ms": percentile(naive, 99),
        "naive_max_ms": max(naive) if naive else float("nan"),
        "naive_started": float(len(naive)),
    }
    figures["ratio_p50"] = figures["naive_p50_ms"] / figures["ours_p50_ms"]
    figures["ratio_p99"] = figures["naive_p99_ms"] / figures["ours_p99_ms"]
    print(
        table(
            f"dispatch latency, POST -> task running ({N} scans at {RATE:g}/s each)",
            ["design", "p50 ms", "p99 ms", "max ms", "started"],
            [
                [
                    "ours (outbox, publish after COMMIT)",
                    figures["ours_p50_ms"],
                    figures["ours_p99_ms"],
                    figures["ours_max_ms"],
                    f"{len(ours)}/{N}",
                ],
                [
                    "naive (report 004: countdown=2 + checks)",
                    figures["naive_p50_ms"],
                    figures["naive_p99_ms"],
                    figures["naive_max_ms"],
                    f"{len(naive)}/{N}",
                ],
                ["ratio naive/ours", figures["ratio_p50"], figures["ratio_p99"], "", ""],
            ],
        )
    )
    print(f"ours: POST response p50 {figures['ours_post_response_p50_ms']:.1f} ms (API side)")
    print(
        f"targets: p50 <= {TARGET_P50_MS:g} ms {verdict(figures['ours_p50_ms'] <= TARGET_P50_MS)}, "
        f"p99 <= {TARGET_P99_MS:g} ms {verdict(figures['ours_p99_ms'] <= TARGET_P99_MS)}"
    )
    return figures
