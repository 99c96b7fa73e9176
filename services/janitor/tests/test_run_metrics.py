"""Every sweep run reaches Prometheus through the maintenance worker, the CronJob's included.

A real `celery-stack-janitor sweep` process (what the chart's CronJob runs) finishes and exits;
the last-run gauges then appear on a real maintenance worker's /metrics with that run's counts.
A later run by an API job replaces them: gauges of the newest run, never a sum, so no run is
counted twice whichever process ran it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from celery_stack_core import keys
from celery_stack_core.models import JanitorRun
from celery_stack_core.sweeps import SweepContext, jobs, results
from celery_stack_devstack.pytest_plugin import await_until, env_for

JANITOR = str(Path(sys.executable).parent / "celery-stack-janitor")
SWEEP = results.NAME
LAST = "celery_stack_janitor_last_run_"


def janitor(settings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **env_for(settings)}
    return subprocess.run([JANITOR, *args], env=env, capture_output=True, text=True, timeout=60)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def last_run(port: int) -> dict[str, float]:
    """This sweep's last-run gauges, by suffix (found, removed, timestamp_seconds...)."""
    return {
        name.removeprefix(LAST): value
        for (name, labels), value in scrape(port).items()
        if name.startswith(LAST) and dict(labels).get("sweep") == SWEEP
    }


async def orphans(redis, n: int) -> None:
    for _ in range(n):  # results of scans whose row does not exist
        await redis.set(
            f"celery-task-meta-scan-{uuid.uuid4()}-1", json.dumps({"status": "SUCCESS"})
        )


async def test_a_cronjob_sweep_run_reaches_the_maintenance_workers_metrics(
    settings, clean_db, redis, start_service, free_tcp_port, tmp_path
):
    port = free_tcp_port
    worker = start_service(
        "worker-maintenance",
        ["celery-stack-worker-maintenance", "--concurrency", "1"],
        METRICS_PORT=str(port),
        WORKER_HEARTBEAT_FILE=str(tmp_path / "alive"),
    )

    async def serving() -> bool:
        try:
            await asyncio.to_thread(scrape, port)
        except OSError:
            return False
        return True

    await await_until(serving, 60, what="the maintenance worker's /metrics")
    assert last_run(port) == {}, "no run recorded yet"

    await orphans(redis, 3)
    before = time.time()
    cli = await asyncio.to_thread(janitor, settings, "sweep", "--only", SWEEP, "--json")
    assert cli.returncode == 0, cli.stderr
    (report,) = json.loads(cli.stdout)["sweeps"]
    assert (report["found"], report["done"]) == (3, 3)

    def shows(found: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return (await asyncio.to_thread(last_run, port)).get("found") == found

        return check

    # the collector reads the table at most once per 15 s: this waits for that, not for a time
    await await_until(shows(3), 60, what="the CLI run's gauges", interval=0.5)
    got = last_run(port)
    assert got["removed"] == 3 and got["duration_seconds"] >= 0
    assert before - 1 <= got["timestamp_seconds"] <= time.time(), worker.output()[-2000:]

    # Then an API job (as the maintenance worker runs it) sweeps one more orphan.
    await orphans(redis, 1)
    job, _msg = await jobs.create(clean_db, settings, kind="orphaned-tasks", requested_by="test")
    ctx = SweepContext(redis, clean_db, settings)
    assert await jobs.execute(ctx, uuid.UUID(job["id"])) == "succeeded"
    await await_until(shows(1), 60, what="the API job's gauges replace the CLI run's", interval=0.5)
    assert last_run(port)["removed"] == 1, "the newest run's counts, not a sum of runs"

    async with clean_db.connect() as conn:
        rows = (
            await conn.execute(select(JanitorRun.source, JanitorRun.found).order_by(JanitorRun.id))
        ).all()
    assert [tuple(r) for r in rows] == [("cli", 3), ("job", 1)], "one row per run"


async def test_locks_a_cronjob_releases_are_counted_on_the_maintenance_workers_metrics(
    settings, clean_db, redis, start_service, free_tcp_port, tmp_path
):
    """Locks held and leaked are true whichever process swept: a CLI run (the CronJob's command)
    releases a leaked lock and exits; the maintenance worker's /metrics counts it. In-process
    counters would show it nowhere: that process is gone, and the worker released nothing."""
    port = free_tcp_port
    start_service(
        "worker-maintenance",
        ["celery-stack-worker-maintenance", "--concurrency", "1"],
        METRICS_PORT=str(port),
        WORKER_HEARTBEAT_FILE=str(tmp_path / "alive"),
    )

    def locks() -> dict[str, float]:
        try:
            got = scrape(port)
        except OSError:
            return {}
        return {n: v for (n, _), v in got.items() if n.startswith("celery_stack_locks_")}

    await await_until(lambda: asyncio.to_thread(lambda: bool(locks())), 60, what="/metrics")
    assert locks() == {"celery_stack_locks_held": 0, "celery_stack_locks_leaked_total": 0}

    await redis.delete(keys.LOCK_STATS)
    gone = json.dumps({"owner": "host:elsewhere:1:x", "ttl": 1})  # another host, no heartbeat
    for name in ("leaked-a", "leaked-b"):
        await redis.set(keys.lock(name), gone)
    await redis.set(keys.lock("live"), json.dumps({"owner": "pod:some-uid:7", "ttl": 30}))
    await redis.set(keys.owner_heartbeat("pod:some-uid:7"), json.dumps({"ttl": 30}), ex=60)
    try:
        for _ in range(2):  # the second run finds nothing more to release
            cli = await asyncio.to_thread(janitor, settings, "sweep", "--only", "locks", "--json")
            assert cli.returncode == 0, cli.stderr
            # held: what the run left (the live owner's lock), leaked: every release so far
            assert locks() == {"celery_stack_locks_held": 1, "celery_stack_locks_leaked_total": 2}
        dry = await asyncio.to_thread(janitor, settings, "sweep", "--only", "locks", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert locks()["celery_stack_locks_leaked_total"] == 2, "a dry run releases nothing"
    finally:
        await redis.delete(
            keys.lock("live"), keys.owner_heartbeat("pod:some-uid:7"), keys.LOCK_STATS
        )
