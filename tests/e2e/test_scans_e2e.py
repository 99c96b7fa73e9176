"""Scans end to end: real API and worker processes, real PostgreSQL and Redis, a real local
HTTPS/HTTP site. The proofs of issue 3: no race, crash between COMMIT and publish, Redis down,
kill -9 and SIGTERM mid-scan, a self-killing handler, rows deleted while queued or running.

The outbox relay is scheduled here by a small ticker thread standing in for beat (it sends
`maintenance.outbox_relay` every OUTBOX_RELAY_INTERVAL, as the beat schedule entry does).
"""

import asyncio
import contextlib
import json
import os
import signal
import threading
import time
import urllib.request
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text

from celery_stack_core.celery_app import make_celery
from celery_stack_core.config import DEV_USER_TOKEN
from celery_stack_devstack.pytest_plugin import wait_until
from celery_stack_devstack.servers import RedisServer, free_port
from celery_stack_scans.demo_site import DemoSite, SiteOptions, make_certs

pytestmark = pytest.mark.e2e
HERE = Path(__file__).parent
TERMINAL = {"succeeded", "failed", "cancelled", "dead"}
USER = {"Authorization": f"Bearer {DEV_USER_TOKEN}", "X-User-Id": "u1"}
SLOW = 1.5  # seconds the site's /slow page takes: scans that crawl it are "mid-scan" for a while


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    return make_certs(str(tmp_path_factory.mktemp("tls")), ["site.test", "crash.site.test"])


@pytest.fixture(scope="module")
def site(tls):
    s = DemoSite(https_port=0, cert=tls["cert"], key=tls["key"], opts=SiteOptions(slow=SLOW))
    yield s
    s.close()


@pytest.fixture
def scan_env(tls):
    return {
        "SCANNER_ALLOW_PRIVATE_CIDRS": "127.0.0.1/32",
        "SCANNER_RESOLVE": json.dumps(
            {"site.test": ["127.0.0.1"], "crash.site.test": ["127.0.0.1"]}
        ),
        "SCANNER_CA_BUNDLE": tls["ca"],
        "SCAN_HEARTBEAT_INTERVAL": "0.5",
        "SCAN_HEARTBEAT_STALE": "3",
        "OUTBOX_RELAY_INTERVAL": "1",
        "OUTBOX_RELAY_MIN_AGE": "0.5",
    }


def config(site, **kw):
    return {"https_port": site.https_port, "http_port": site.http_port, **kw}


FAST = {"max_pages": 1, "check_http": False}
SLOW_SCAN = {"max_pages": 4}  # landing, /about, /slow, /page/1: takes > SLOW seconds


def start_worker(start_service, env, tmp_path, name, *extra, script=None, wait=True, **more):
    argv = (["python", str(HERE / script)] if script else ["celery-stack-worker-scans"]) + [
        "--concurrency",
        "2",
        "-n",
        f"{name}@%h",
        *extra,
    ]
    alive = tmp_path / f"{name}.alive"
    svc = start_service(name, argv, **{**env, "WORKER_HEARTBEAT_FILE": str(alive), **more})
    svc.alive = alive
    if wait:
        consuming(svc)
    return svc


def consuming(*services):
    """Wait until every worker touches its liveness file: it consumes from the broker."""
    for svc in services:
        wait_until(svc.alive.exists, timeout=90, what=f"{svc.name} consuming")


def start_maintenance(start_service, env, tmp_path, *, wait=True, **more):
    alive = tmp_path / "maintenance.alive"
    svc = start_service(
        "worker-maintenance",
        ["celery-stack-worker-maintenance", "--concurrency", "1"],
        **{**env, "WORKER_HEARTBEAT_FILE": str(alive), **more},
    )
    svc.alive = alive
    if wait:
        consuming(svc)
    return svc


def start_api(start_service, env, argv=None, **more):
    port = free_port()
    svc = start_service(
        "api",
        argv(port)
        if argv
        else ["celery-stack-api", "serve", "--host", "127.0.0.1", "--port", str(port)],
        **{**env, **more},
    )
    base = f"http://127.0.0.1:{port}"

    def up():
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, timeout=60, what="api up")
    return svc, base


class RelayTicker:
    """Stands in for beat: sends maintenance.outbox_relay every `every` seconds."""

    def __init__(self, settings, every=1.0, redis_url=None):
        s = settings.replace(REDIS_URL=redis_url or settings.stores.redis_url)
        self.app = make_celery(s)
        self.every = every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self.stop.wait(self.every):
            # broker down: the next tick tries again, like beat
            with contextlib.suppress(Exception):
                self.app.send_task("maintenance.outbox_relay", ignore_result=True, retry=False)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *_):
        self.stop.set()
        self.thread.join(5)


async def rows(engine, ids=None):
    q = "SELECT * FROM scans" + (" WHERE id = ANY(:ids)" if ids else "")
    async with engine.connect() as conn:
        res = await conn.execute(text(q), {"ids": [uuid.UUID(i) for i in ids]} if ids else {})
        return {str(r.id): r for r in res.all()}


async def wait_terminal(engine, ids, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = await rows(engine, ids)
        if len(got) == len(ids) and all(r.status in TERMINAL for r in got.values()):
            return got
        await asyncio.sleep(0.25)
    got = await rows(engine, ids)
    pending = {s for s in (r.status for r in got.values()) if s not in TERMINAL}
    raise AssertionError(f"scans not terminal after {timeout}s: {pending}")


async def wait_status(engine, sid, statuses, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = (await rows(engine, [sid])).get(sid)
        if r is not None and r.status in statuses:
            return r
        await asyncio.sleep(0.1)
    raise AssertionError(f"scan {sid} never reached {statuses}")


async def broker_idle(settings, timeout=60.0):
    """Nothing queued and nothing unacknowledged on the scans queue: no delivery can follow."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(settings.stores.redis_url)
    try:
        deadline = time.monotonic() + timeout
        while await client.llen("scans") or await client.hlen("unacked"):
            assert time.monotonic() < deadline, "the scans queue never went idle"
            await asyncio.sleep(0.1)
    finally:
        await client.aclose()


async def findings(engine, sid):
    async with engine.connect() as conn:
        res = await conn.execute(
            text("SELECT key FROM findings WHERE scan_id = :id"), {"id": uuid.UUID(sid)}
        )
        return [r.key for r in res.all()]


async def outbox_for(engine, sid):
    async with engine.connect() as conn:
        res = await conn.execute(
            text("SELECT * FROM outbox WHERE args->>0 = :id ORDER BY id"), {"id": sid}
        )
        return res.all()


def started_lines(*services, sid):
    return sum(
        1
        for svc in services
        for line in svc.output().splitlines()
        if '"scan started"' in line and sid in line
    )


def assert_clean_logs(*services):
    """No FK error, no failed scan task. (Celery's own tracebacks on a lost broker connection,
    e.g. restarting Gossip, are expected in the Redis-down test and not ours.)"""
    for svc in services:
        out = svc.output()
        for bad in ("ForeignKeyViolation", "IntegrityError", "row not found", "scan crashed"):
            assert bad not in out, f"{svc.name}: {bad}\n{out[-3000:]}"
        failed = [line for line in out.splitlines() if "scans.run[" in line and "raised" in line]
        assert not failed, f"{svc.name}: a scan task raised: {failed[:2]}"


# --- the race ---------------------------------------------------------------------------------
@pytest.mark.chaos
async def test_race_many_scans_created_concurrently(
    start_service, settings, clean_db, redis, site, scan_env, tmp_path
):
    """1000 scans POSTed concurrently to a real API process while two worker processes run:
    every task finds its committed row (zero no-ops), every scan ends succeeded, once."""
    workers = [
        start_worker(start_service, scan_env, tmp_path, f"scans{i}", wait=False) for i in range(2)
    ]
    _, base = start_api(start_service, scan_env)
    consuming(*workers)
    n = 1000
    sem = asyncio.Semaphore(48)

    async with httpx.AsyncClient(base_url=base, headers=USER, timeout=60) as client:

        async def create(i):
            async with sem:
                r = await client.post(
                    "/api/v1/scans", json={"domain": "site.test", "config": config(site, **FAST)}
                )
                assert r.status_code == 201, r.text
                return r.json()["id"]

        ids = await asyncio.gather(*(create(i) for i in range(n)))
    done = await wait_terminal(clean_db, ids, timeout=240)
    assert {r.status for r in done.values()} == {"succeeded"}
    assert {r.deliveries for r in done.values()} == {1}
    async with clean_db.connect() as conn:
        with_findings = (
            await conn.execute(text("SELECT count(DISTINCT scan_id) FROM findings"))
        ).scalar()
        unsent = (
            await conn.execute(text("SELECT count(*) FROM outbox WHERE sent_at IS NULL"))
        ).scalar()
    assert with_findings == n and unsent == 0
    noops = sum(svc.output().count("scan message is a no-op") for svc in workers)
    assert noops == 0
    assert_clean_logs(*workers)


# --- crash between COMMIT and publish -----------------------------------------------------------
@pytest.mark.chaos
async def test_api_killed_between_commit_and_publish(
    start_service, settings, clean_db, redis, site, scan_env, tmp_path
):
    api, base = start_api(
        start_service,
        scan_env,
        argv=lambda port: ["python", str(HERE / "scans_api_crashing.py"), str(port)],
    )
    with pytest.raises(httpx.HTTPError):
        httpx.post(
            f"{base}/api/v1/scans",
            json={"domain": "site.test", "config": config(site, **FAST)},
            headers=USER,
            timeout=30,
        )
    assert api.proc.wait(30) == -signal.SIGKILL
    [scan] = (await rows(clean_db)).values()
    sid = str(scan.id)
    [row] = await outbox_for(clean_db, sid)
    assert scan.status == "queued" and row.sent_at is None  # committed, never published
    assert await redis.llen("scans") == 0

    worker = start_worker(start_service, scan_env, tmp_path, "scans", wait=False)
    consuming(worker, start_maintenance(start_service, scan_env, tmp_path, wait=False))
    t0 = time.monotonic()
    with RelayTicker(settings, every=1.0):
        done = await wait_terminal(clean_db, [sid], timeout=60)
    # the relay sent it within its interval (+ min age, + startup slack), and only once
    assert time.monotonic() - t0 < 30
    assert done[sid].status == "succeeded" and done[sid].deliveries == 1
    [row] = await outbox_for(clean_db, sid)
    assert row.sent_at is not None and row.attempts == 1
    assert started_lines(worker, sid=sid) == 1


# --- Redis down for a while ---------------------------------------------------------------------
@pytest.mark.chaos
async def test_scans_accepted_while_redis_is_down_are_dispatched_after(
    start_service, settings, clean_db, site, scan_env, tmp_path
):
    broker = RedisServer(tmp_path / "broker").start()
    env = {**scan_env, "REDIS_URL": broker.url}
    try:
        workers = [start_worker(start_service, env, tmp_path, "scans", wait=False)]
        maintenance = start_maintenance(start_service, env, tmp_path, wait=False)
        _, base = start_api(start_service, env)
        consuming(*workers, maintenance)
        broker.kill9()
        async with httpx.AsyncClient(base_url=base, headers=USER, timeout=60) as client:
            responses = [
                await client.post(
                    "/api/v1/scans", json={"domain": "site.test", "config": config(site, **FAST)}
                )
                for _ in range(20)
            ]
        assert [r.status_code for r in responses] == [201] * 20
        ids = [r.json()["id"] for r in responses]
        async with clean_db.connect() as conn:
            unsent = (
                await conn.execute(text("SELECT count(*) FROM outbox WHERE sent_at IS NULL"))
            ).scalar()
        assert unsent == 20
        time.sleep(2)
        broker.start()  # same port, same AOF
        with RelayTicker(settings, every=1.0, redis_url=broker.url):
            done = await wait_terminal(clean_db, ids, timeout=120)
        assert {r.status for r in done.values()} == {"succeeded"}
        assert {r.deliveries for r in done.values()} == {1}
        async with clean_db.connect() as conn:
            unsent = (
                await conn.execute(text("SELECT count(*) FROM outbox WHERE sent_at IS NULL"))
            ).scalar()
        assert unsent == 0
        assert_clean_logs(*workers)
    finally:
        broker.stop()


# --- workers dying ------------------------------------------------------------------------------
CHAOS_LIMITS = {
    "CELERY_VISIBILITY_TIMEOUT": "10",
    "SCANS_SOFT_TIME_LIMIT": "7",
    "SCANS_TIME_LIMIT": "8",
    "COUNTERS_SOFT_TIME_LIMIT": "4",
    "COUNTERS_TIME_LIMIT": "5",
    "MAINTENANCE_SOFT_TIME_LIMIT": "4",
    "MAINTENANCE_TIME_LIMIT": "5",
}


async def create_scan(api, site, cfg):
    r = await api.post("/api/v1/scans", json={"domain": "site.test", "config": config(site, **cfg)})
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def reference_keys(api, clean_db, site):
    """The findings of an undisturbed scan of the same site, to compare a disturbed one with."""
    sid = await create_scan(api, site, SLOW_SCAN)
    await wait_terminal(clean_db, [sid], timeout=60)
    return sorted(await findings(clean_db, sid))


@pytest.mark.chaos
async def test_kill9_worker_mid_scan_completes_once(
    start_service, api, clean_db, site, scan_env, tmp_path
):
    env = {**scan_env, **CHAOS_LIMITS}
    w1 = start_worker(start_service, env, tmp_path, "w1")
    expected = await reference_keys(api, clean_db, site)
    sid = await create_scan(api, site, SLOW_SCAN)
    running = await wait_status(clean_db, sid, {"running"})
    # mid-scan: its heartbeat has beaten at least once since it started running
    while (await rows(clean_db, [sid]))[sid].heartbeat_at == running.heartbeat_at:
        await asyncio.sleep(0.05)
    w1.signal(signal.SIGKILL)  # the whole worker: parent and pool children
    w1.proc.wait(10)
    assert (await rows(clean_db, [sid]))[sid].status == "running"
    # the message is invisible until the visibility timeout; the new worker restores it then
    w2 = start_worker(start_service, env, tmp_path, "w2")
    done = await wait_terminal(clean_db, [sid], timeout=60)
    assert done[sid].status == "succeeded" and done[sid].deliveries == 2
    keys = await findings(clean_db, sid)
    assert len(keys) == len(set(keys)) and sorted(keys) == expected
    assert started_lines(w2, sid=sid) == 1
    assert_clean_logs(w2)


@pytest.mark.chaos
async def test_sigterm_mid_scan_finishes_it_warm(
    start_service, api, clean_db, site, scan_env, tmp_path
):
    """SIGTERM to the worker (PID 1 in the pod): warm shutdown lets the running scan finish."""
    w1 = start_worker(start_service, scan_env, tmp_path, "w1")
    sid = await create_scan(api, site, SLOW_SCAN)
    await wait_status(clean_db, sid, {"running"})
    os.kill(w1.proc.pid, signal.SIGTERM)
    assert w1.proc.wait(60) == 0
    done = await wait_terminal(clean_db, [sid], timeout=5)
    assert done[sid].status == "succeeded" and done[sid].deliveries == 1


@pytest.mark.chaos
async def test_sigterm_mid_scan_with_soft_shutdown_requeues_and_finishes(
    start_service, api, clean_db, site, scan_env, tmp_path
):
    """With SIGTERM mapped to Celery's soft shutdown (REMAP_SIGTERM=SIGQUIT) and a short
    CELERY_SOFT_SHUTDOWN_TIMEOUT, a scan still running is requeued and another worker finishes
    it, once, without duplicate findings."""
    env = {**scan_env, "REMAP_SIGTERM": "SIGQUIT", "CELERY_SOFT_SHUTDOWN_TIMEOUT": "0.5"}
    w1 = start_worker(start_service, env, tmp_path, "w1")
    expected = await reference_keys(api, clean_db, site)
    sid = await create_scan(api, site, SLOW_SCAN)
    await wait_status(clean_db, sid, {"running"})
    os.kill(w1.proc.pid, signal.SIGTERM)
    w1.proc.wait(60)
    assert (await rows(clean_db, [sid]))[sid].status == "running"
    w2 = start_worker(start_service, env, tmp_path, "w2")
    done = await wait_terminal(clean_db, [sid], timeout=60)
    assert done[sid].status == "succeeded" and done[sid].deliveries == 2
    keys = await findings(clean_db, sid)
    assert len(keys) == len(set(keys)) and sorted(keys) == expected
    assert started_lines(w2, sid=sid) == 1


@pytest.mark.chaos
async def test_handler_that_kills_its_worker_ends_dead_after_the_cap(
    start_service, settings, api, clean_db, site, scan_env, tmp_path
):
    w = start_worker(
        start_service,
        scan_env,
        tmp_path,
        "w1",
        script="scans_worker_hooked.py",
        SCAN_MAX_DELIVERIES="3",
    )
    r = await api.post(
        "/api/v1/scans", json={"domain": "crash.site.test", "config": config(site, **FAST)}
    )
    sid = r.json()["id"]
    done = await wait_terminal(clean_db, [sid], timeout=90)
    assert done[sid].status == "dead" and done[sid].deliveries == 4
    assert "after 3 deliveries" in done[sid].error
    # not an endless loop: no message is left that could deliver it again
    await broker_idle(settings)
    again = (await rows(clean_db, [sid]))[sid]
    assert again.status == "dead" and again.deliveries == 4
    # and the worker still serves other scans
    ok = await create_scan(api, site, FAST)
    assert (await wait_terminal(clean_db, [ok], timeout=60))[ok].status == "succeeded"
    # the dead scan can be retried by an operator: a new attempt through the outbox
    r = await api.post(f"/api/v1/scans/{sid}/retry")
    assert r.status_code == 202 and r.json()["attempt"] == 2
    assert w.proc.poll() is None


@pytest.mark.chaos
async def test_scan_whose_finish_keeps_failing_is_redelivered_and_ends_terminal(
    start_service, settings, api, clean_db, site, scan_env, tmp_path
):
    """run_scan raising (here: finish gives up) must not ack the message away and leave the row
    'running' forever: the message comes back, and the delivery cap ends it, once."""
    resolve = {**json.loads(scan_env["SCANNER_RESOLVE"]), "finfail.site.test": ["127.0.0.1"]}
    start_worker(
        start_service,
        {**scan_env, "SCANNER_RESOLVE": json.dumps(resolve)},
        tmp_path,
        "w1",
        script="scans_worker_finish_fails.py",
        SCAN_MAX_DELIVERIES="2",
    )
    r = await api.post(
        "/api/v1/scans", json={"domain": "finfail.site.test", "config": config(site, **FAST)}
    )
    sid = r.json()["id"]
    done = await wait_terminal(clean_db, [sid], timeout=90)
    assert done[sid].status == "dead" and done[sid].deliveries == 3
    await broker_idle(settings)  # no message is left that could deliver it again
    again = (await rows(clean_db, [sid]))[sid]
    assert again.status == "dead" and again.deliveries == 3
    # the worker still finishes other scans normally
    ok = await create_scan(api, site, FAST)
    assert (await wait_terminal(clean_db, [ok], timeout=60))[ok].status == "succeeded"


# --- rows deleted under the worker ----------------------------------------------------------------
def scrape(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def metric(body, name, **labels):
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in body.splitlines():
        if line.startswith(name) and (not want or f"{{{want}}}" in line):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.chaos
async def test_rows_deleted_while_queued_or_running_are_clean_noops(
    start_service, api, clean_db, site, scan_env, tmp_path
):
    from opentelemetry.sdk.trace import TracerProvider

    queued = await create_scan(api, site, FAST)
    assert (await api.delete(f"/api/v1/scans/{queued}")).status_code == 204  # before any worker
    port = free_port()
    w = start_worker(
        start_service,
        scan_env,
        tmp_path,
        "w1",
        METRICS_PORT=str(port),
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom"),
    )
    wait_until(
        lambda: metric(scrape(port), "celery_stack_scan_noops_total", reason="row_gone") == 1,
        timeout=30,
        what="queued orphan counted",
    )
    # running: delete mid-scan; the worker stops at its next checkpoint, writes nothing more
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("client") as span:
        running = await create_scan(api, site, SLOW_SCAN)
    await wait_status(clean_db, running, {"running"})
    assert (await api.delete(f"/api/v1/scans/{running}")).status_code == 204
    wait_until(
        lambda: metric(scrape(port), "celery_stack_scan_noops_total", reason="row_gone") == 2,
        timeout=30,
        what="running orphan counted",
    )
    assert await findings(clean_db, running) == []
    assert metric(scrape(port), "celery_stack_task_failures_total") == 0
    assert_clean_logs(w)
    # the worker continued the trace of the request that created the scan (via the outbox row)
    trace_id = format(span.get_span_context().trace_id, "032x")
    started = [
        json.loads(line)
        for line in w.output().splitlines()
        if '"scan started"' in line and running in line
    ]
    assert started and started[0]["trace_id"] == trace_id
