"""The counters slice as it runs in production: api (uvicorn), worker-counters and beat as real
processes on real Redis and PostgreSQL; views and likes posted over HTTP reach the database."""

import httpx
import pytest
from sqlalchemy import text

from celery_stack_core.config import DEV_USER_TOKEN
from celery_stack_devstack.pytest_plugin import wait_until

pytestmark = pytest.mark.e2e


async def test_views_and_likes_reach_the_database_within_seconds(
    start_service, free_tcp_port, clean_db, redis, engine, tmp_path
):
    from celery_stack_devstack.servers import free_port

    metrics_port = free_port()
    fast = {"COUNTER_FLUSH_INTERVAL": "0.5", "RECOUNT_INTERVAL": "0.5", "METRICS_PORT": "0"}
    api = start_service(
        "api",
        ["celery-stack-api", "serve", "--host", "127.0.0.1", "--port", str(free_tcp_port)],
        **fast,
    )
    worker = start_service(
        "worker-counters",
        ["celery-stack-worker-counters", "--concurrency", "2"],
        **{**fast, "METRICS_PORT": str(metrics_port)},
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom"),
        WORKER_HEARTBEAT_FILE=str(tmp_path / "alive"),
    )
    beat = start_service("beat", ["celery-stack-beat", "run"], **fast)
    base = f"http://127.0.0.1:{free_tcp_port}"
    headers = {"Authorization": f"Bearer {DEV_USER_TOKEN}", "X-User-Id": "alice"}

    def up() -> bool:
        try:
            return httpx.get(f"{base}/readyz").status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, 60, what="api ready")
    async with httpx.AsyncClient(base_url=base, headers=headers) as client:
        post = (await client.post("/api/v1/posts", json={"title": "e2e"})).json()["id"]
        for i in range(25):
            r = await client.post(f"/api/v1/posts/{post}/views", json={"viewer_id": f"v{i % 5}"})
            assert r.status_code == 202
        assert (await client.put(f"/api/v1/posts/{post}/like")).status_code == 200
        await client.put(f"/api/v1/posts/{post}/like", headers={"X-User-Id": "bob"})

    async def db_counts():
        async with engine.connect() as conn:
            return (
                await conn.execute(
                    text("SELECT views, likes FROM posts WHERE id = :i"), {"i": post}
                )
            ).one()

    import asyncio

    for _ in range(300):
        if tuple(await db_counts()) == (25, 2):
            break
        await asyncio.sleep(0.1)
    assert tuple(await db_counts()) == (25, 2), (worker.output()[-3000:], beat.output()[-2000:])
    async with httpx.AsyncClient(base_url=base, headers=headers) as client:
        body = (await client.get(f"/api/v1/posts/{post}/counts")).json()
    assert (
        body["counts"]["views"] == 25
        and body["counts"]["likes"] == 2
        and body["unique_viewers"] == 5
    )
    assert (tmp_path / "alive").exists(), "the consuming worker touches its liveness file"
    # prefork children's metrics are collected by the parent's endpoint (multiprocess mode)
    scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text
    applied = [
        float(line.split()[-1])
        for line in scraped.splitlines()
        if line.startswith("celery_stack_flush_rows_applied_total{")
    ]
    assert sum(applied) >= 1, scraped[:2000]
    # structured logs: every line the services print is one JSON object, none skipped
    import json

    for svc in (api, worker, beat):
        records = []
        for line in svc.output().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                pytest.fail(f"{svc.name} printed a line that is not JSON: {line!r}")
        assert records and all({"time", "level", "message", "service"} <= r.keys() for r in records)
    assert api.proc.poll() is None and worker.proc.poll() is None
    # graceful SIGTERM: the worker exits cleanly
    assert worker.stop(timeout=60) == 0
