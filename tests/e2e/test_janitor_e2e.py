"""The janitor against real processes: kill -9 a worker process that holds a counters flush
lease and a running scan. The janitor leaves both alone while the grace period runs, then
releases the lease (long before its 60 s TTL) and requeues the scan as attempt 2, which another
worker finishes once; the old attempt's message, restored by the broker, is a clean no-op."""

import asyncio
import json
import signal
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from celery_stack_core import keys, outbox, sweeps
from celery_stack_core.celery_app import make_celery
from celery_stack_core.models import Scan
from celery_stack_core.sweeps.base import SweepContext
from celery_stack_devstack.pytest_plugin import await_until, wait_until

pytestmark = pytest.mark.e2e
HERE = Path(__file__).parent
TERMINAL = {"succeeded", "failed", "cancelled"}
LIMITS = {
    "CELERY_VISIBILITY_TIMEOUT": "10",
    "SCANS_SOFT_TIME_LIMIT": "7",
    "SCANS_TIME_LIMIT": "8",
    "COUNTERS_SOFT_TIME_LIMIT": "4",
    "COUNTERS_TIME_LIMIT": "5",
    "MAINTENANCE_SOFT_TIME_LIMIT": "4",
    "MAINTENANCE_TIME_LIMIT": "5",
    "SCAN_HEARTBEAT_INTERVAL": "0.5",
    "SCAN_HEARTBEAT_STALE": "3",
    # hold.test resolves to a closed local port: the scan fails fast, which is a finish
    "SCANNER_ALLOW_PRIVATE_CIDRS": "127.0.0.1/32",
    "SCANNER_RESOLVE": json.dumps({"hold.test": ["127.0.0.1"]}),
}
LEASE = keys.lock("flush:post:views:0")


def start_worker(start_service, tmp_path, name, argv, **env):
    alive = tmp_path / f"{name}.alive"
    svc = start_service(
        name,
        [*argv, "--concurrency", "1", "-n", f"{name}@%h"],
        **{**LIMITS, "WORKER_HEARTBEAT_FILE": str(alive), **env},
    )
    wait_until(alive.exists, timeout=120, what=f"{name} consuming")
    return svc


async def scan_row(engine, sid):
    async with engine.connect() as conn:
        t = Scan.__table__
        return (await conn.execute(select(t).where(t.c.id == sid))).one()


@pytest.mark.chaos
async def test_kill9_lease_and_scan_released_after_grace_and_finished_once(
    start_service, api, settings, clean_db, redis, tmp_path
):
    mark = tmp_path / "held"
    w1 = start_worker(
        start_service,
        tmp_path,
        "w1",
        ["python", str(HERE / "janitor_worker_hooked.py")],
        HOLD_MARK=str(mark),
    )
    r = await api.post(
        "/api/v1/scans", json={"domain": "hold.test", "config": {"check_http": False}}
    )
    assert r.status_code == 201, r.text
    sid = r.json()["id"]
    await await_until(lambda: asyncio.sleep(0, mark.exists()), timeout=60, what="lease held")
    held = json.loads(await redis.get(LEASE))
    assert held["owner"].endswith(f":{mark.read_text()}:" + held["owner"].split(":")[-1])
    w1.signal(signal.SIGKILL)  # the whole worker: parent and pool child
    w1.proc.wait(10)
    killed_at = time.monotonic()

    s = settings.replace(
        JANITOR_LOCK_GRACE=3.0,
        SCAN_HEARTBEAT_INTERVAL=0.5,
        SCAN_HEARTBEAT_STALE=3.0,
        JANITOR_STUCK_SCAN_GRACE=1.0,
    )
    app = outbox.fail_fast(make_celery(s, "janitor_test"))
    ctx = SweepContext(redis, clean_db, s, publish=outbox.celery_publisher(app))
    names = ["locks", "stuck-scans"]
    early = await sweeps.run(ctx, names, dry_run=False)
    assert [r.done for r in early] == [0, 0], [r.as_dict() for r in early]
    assert early[0].skipped == {"heartbeat_fresh": 1}
    assert (
        await redis.get(LEASE) is not None and (await scan_row(clean_db, sid)).status == "running"
    )

    await asyncio.sleep(4.5)
    dry = await sweeps.run(ctx, names, dry_run=True)
    real = await sweeps.run(ctx, names, dry_run=False)
    assert [r.outcome() for r in dry] == [r.outcome() for r in real]
    assert real[0].by_action["release"] == 1 and real[0].actions[0].detail[1] == (
        "reason",
        "pid_gone",
    )
    assert real[1].by_action == {"requeue": 1}
    assert await redis.get(LEASE) is None
    assert time.monotonic() - killed_at < 30  # released by the janitor, not by the 60 s TTL
    row = await scan_row(clean_db, sid)
    assert (row.status, row.attempt, row.worker) == ("queued", 2, None)

    w2 = start_worker(start_service, tmp_path, "w2", ["celery-stack-worker-scans"])

    async def finished():
        return (await scan_row(clean_db, sid)).status in TERMINAL

    await await_until(finished, timeout=90, what="scan finished")
    row = await scan_row(clean_db, sid)
    assert row.attempt == 2 and row.status in TERMINAL
    log = w2.output()
    assert log.count('"scan finished"') == 1, log[-3000:]
    # the first attempt's message comes back from the unacked set: a no-op, not a second run
    wait_until(lambda: '"stale_attempt"' in w2.output(), timeout=60, what="old attempt no-op")
    assert (await scan_row(clean_db, sid)).finished_at == row.finished_at
    app.close()
