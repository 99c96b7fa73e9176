"""run_scan on real PostgreSQL without a broker: claim, idempotent findings, exactly one
terminal state, the redelivery cap, and a row deleted or cancelled while queued or running."""

import asyncio
import json
import uuid

import pytest
from sqlalchemy import text

from celery_stack_core import metrics
from celery_stack_core.hooks import HOOKS
from celery_stack_scans.lifecycle import Delivery
from celery_stack_scans.run import RunLimits, run_scan

LIMITS = RunLimits(heartbeat_interval=0.2, stale_after=1.0, max_deliveries=3, deadline=30)


async def insert_scan(engine, site, domain="site.test", **config):
    sid = uuid.uuid4()
    cfg = {"https_port": site.https_port, "http_port": site.http_port, **config}
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO scans (id, owner, domain, config) "
                "VALUES (:id, 'u1', :d, CAST(:c AS jsonb))"
            ),
            {"id": sid, "d": domain, "c": json.dumps(cfg)},
        )
    return sid


async def row(engine, sid):
    async with engine.connect() as conn:
        return (await conn.execute(text("SELECT * FROM scans WHERE id = :id"), {"id": sid})).first()


async def finding_count(engine, sid):
    async with engine.connect() as conn:
        return (
            await conn.execute(
                text("SELECT count(*) FROM findings WHERE scan_id = :id"), {"id": sid}
            )
        ).scalar()


def counter(metric, *labels):
    m = metric.labels(*labels) if labels else metric
    return m._value.get()


@pytest.fixture
def hook():
    yield lambda fn: HOOKS.install("scans", fn)
    HOOKS.remove("scans")


async def test_scan_succeeds_once(clean_db, site, scan_options):
    sid = await insert_scan(clean_db, site)
    observed = (
        metrics.SCAN_DISPATCH_LATENCY._sum.get(),
        counter(metrics.SCANS_FINISHED, "succeeded"),
    )
    assert (
        await run_scan(clean_db, Delivery(sid, 1, "w1"), options=scan_options(), limits=LIMITS)
        == "succeeded"
    )
    r = await row(clean_db, sid)
    assert r.status == "succeeded" and r.deliveries == 1 and r.worker == "w1"
    assert r.started_at and r.finished_at and r.heartbeat_at is None
    n = await finding_count(clean_db, sid)
    assert n > 5
    assert metrics.SCAN_DISPATCH_LATENCY._sum.get() > observed[0]
    assert counter(metrics.SCANS_FINISHED, "succeeded") == observed[1] + 1
    # a duplicate message for the same attempt: no-op, nothing duplicated, state unchanged
    assert (
        await run_scan(clean_db, Delivery(sid, 1, "w2"), options=scan_options(), limits=LIMITS)
        == "finished"
    )
    assert await finding_count(clean_db, sid) == n
    assert (await row(clean_db, sid)).worker == "w1"


async def test_redelivery_after_a_crash_does_not_duplicate_findings(
    clean_db, site, scan_options, hook
):
    sid = await insert_scan(clean_db, site)

    class Crash(BaseException):
        pass

    seen = []

    def crash_after_first_page(step, domain):
        if step == "checkpoint":
            seen.append(step)
            if len(seen) == 3:
                raise Crash

    hook(crash_after_first_page)
    with pytest.raises(Crash):
        await run_scan(clean_db, Delivery(sid, 1, "w1"), options=scan_options(), limits=LIMITS)
    partial = await finding_count(clean_db, sid)
    assert partial > 0 and (await row(clean_db, sid)).status == "running"
    hook(None)
    before = counter(metrics.SCAN_REDELIVERIES)
    # redelivered to another worker: waits for w1's heartbeat to go stale, then takes over
    assert (
        await run_scan(clean_db, Delivery(sid, 1, "w2"), options=scan_options(), limits=LIMITS)
        == "succeeded"
    )
    r = await row(clean_db, sid)
    assert r.deliveries == 2 and r.worker == "w2"
    assert counter(metrics.SCAN_REDELIVERIES) == before + 1
    # the same findings as a clean run: nothing duplicated
    sid2 = await insert_scan(clean_db, site)
    await run_scan(clean_db, Delivery(sid2, 1, "w3"), options=scan_options(), limits=LIMITS)
    assert await finding_count(clean_db, sid) == await finding_count(clean_db, sid2)


async def test_redelivery_cap_ends_dead_with_reason(clean_db, site, scan_options, hook):
    sid = await insert_scan(clean_db, site)

    class Crash(BaseException):
        pass

    def die(step, domain):
        if step == "claimed":
            raise Crash

    hook(die)
    dead_before = counter(metrics.SCANS_DEAD)
    for i in range(3):
        with pytest.raises(Crash):
            await run_scan(
                clean_db, Delivery(sid, 1, f"w{i}"), options=scan_options(), limits=LIMITS
            )
    assert (
        await run_scan(clean_db, Delivery(sid, 1, "w9"), options=scan_options(), limits=LIMITS)
        == "dead"
    )
    r = await row(clean_db, sid)
    assert r.status == "dead" and "3 deliveries" in r.error and r.finished_at
    assert counter(metrics.SCANS_DEAD) == dead_before + 1
    # and it stays dead: a further message is a no-op
    assert (
        await run_scan(clean_db, Delivery(sid, 1, "w9"), options=scan_options(), limits=LIMITS)
        == "finished"
    )


async def test_row_deleted_while_queued_is_a_counted_noop(clean_db, site, scan_options):
    sid = await insert_scan(clean_db, site)
    async with clean_db.begin() as conn:
        await conn.execute(text("DELETE FROM scans WHERE id = :id"), {"id": sid})
    before = counter(metrics.SCAN_NOOPS, "row_gone")
    assert (
        await run_scan(clean_db, Delivery(sid, 1, "w1"), options=scan_options(), limits=LIMITS)
        == "row_gone"
    )
    assert counter(metrics.SCAN_NOOPS, "row_gone") == before + 1


async def test_row_deleted_while_running_is_a_counted_noop(clean_db, site, scan_options, hook):
    sid = await insert_scan(clean_db, site)

    async def delete_at_second_checkpoint(step, domain, seen=[]):  # noqa: B006
        if step == "checkpoint":
            seen.append(1)
            if len(seen) == 2:
                async with clean_db.begin() as conn:
                    await conn.execute(text("DELETE FROM scans WHERE id = :id"), {"id": sid})

    hook(delete_at_second_checkpoint)
    before = counter(metrics.SCAN_NOOPS, "row_gone")
    assert (
        await run_scan(clean_db, Delivery(sid, 1, "w1"), options=scan_options(), limits=LIMITS)
        == "row_gone"
    )
    assert counter(metrics.SCAN_NOOPS, "row_gone") == before + 1
    assert await finding_count(clean_db, sid) == 0  # cascaded, and nothing written after


async def test_cancel_while_running_stops_at_the_next_checkpoint(
    clean_db, site, scan_options, hook
):
    sid = await insert_scan(clean_db, site)
    pages = []

    async def cancel_at_first_checkpoint(step, domain):
        if step == "checkpoint":
            pages.append(1)
            if len(pages) == 1:
                async with clean_db.begin() as conn:
                    await conn.execute(
                        text("UPDATE scans SET status = 'cancelled' WHERE id = :id"), {"id": sid}
                    )

    hook(cancel_at_first_checkpoint)
    assert (
        await run_scan(clean_db, Delivery(sid, 1, "w1"), options=scan_options(), limits=LIMITS)
        == "cancelled"
    )
    assert len(pages) == 1
    r = await row(clean_db, sid)
    assert r.status == "cancelled" and await finding_count(clean_db, sid) == 0


async def test_stale_attempt_is_a_noop(clean_db, site, scan_options):
    sid = await insert_scan(clean_db, site)
    async with clean_db.begin() as conn:
        await conn.execute(text("UPDATE scans SET attempt = 2 WHERE id = :id"), {"id": sid})
    assert (
        await run_scan(clean_db, Delivery(sid, 1, "w1"), options=scan_options(), limits=LIMITS)
        == "stale_attempt"
    )
    assert (await row(clean_db, sid)).status == "queued"


async def test_blocked_target_fails_with_reason(clean_db, site, scan_options):
    sid = await insert_scan(clean_db, site)
    opts = scan_options(resolve={"site.test": ["169.254.169.254"]})
    assert await run_scan(clean_db, Delivery(sid, 1, "w1"), options=opts, limits=LIMITS) == "failed"
    r = await row(clean_db, sid)
    assert r.status == "failed" and "metadata" in r.error


async def test_deadline_fails_the_scan(clean_db, site, scan_options, hook):
    sid = await insert_scan(clean_db, site)

    async def stall(step, domain):
        if step == "checkpoint":
            await asyncio.sleep(5)  # a page that takes far longer than the scan may

    hook(stall)
    limits = RunLimits(heartbeat_interval=0.2, stale_after=1.0, max_deliveries=3, deadline=1.0)
    outcome = await run_scan(
        clean_db, Delivery(sid, 1, "w1"), options=scan_options(), limits=limits
    )
    assert outcome == "failed"
    r = await row(clean_db, sid)
    assert r.status == "failed" and "time limit" in r.error


async def test_a_retried_claim_by_the_same_worker_keeps_it(clean_db, site):
    """A claim whose COMMIT landed but whose reply was lost is retried: same claim, one
    delivery; another worker meanwhile sees the scan busy."""
    from celery_stack_scans import lifecycle

    sid = await insert_scan(clean_db, site)
    kw = {"stale_after": 5.0, "max_deliveries": 3}
    first = await lifecycle.claim(clean_db, Delivery(sid, 1, "w1"), **kw)
    again = await lifecycle.claim(clean_db, Delivery(sid, 1, "w1"), **kw)
    other = await lifecycle.claim(clean_db, Delivery(sid, 1, "w2"), **kw)
    assert (first.outcome, again.outcome, other.outcome) == ("claimed", "claimed", "busy")
    assert (await row(clean_db, sid)).deliveries == 1


async def test_a_released_scan_redelivered_to_the_same_worker_is_a_new_delivery(clean_db, site):
    """The task shell releases the row when run_scan raises and requeues the message: even if
    the same process gets it back, it counts toward the cap (no endless loop of delivery 1)."""
    from celery_stack_scans import lifecycle

    sid = await insert_scan(clean_db, site)
    kw = {"stale_after": 60.0, "max_deliveries": 2}
    outcomes = []
    for _ in range(3):
        outcomes.append((await lifecycle.claim(clean_db, Delivery(sid, 1, "w1"), **kw)).outcome)
        await lifecycle.release_dead(clean_db, Delivery(sid, 1, "w1"))
    assert outcomes == ["claimed", "claimed", "dead"]
    r = await row(clean_db, sid)
    assert r.status == "dead" and r.deliveries == 3


def test_owner_is_gone_only_for_a_dead_process_on_this_machine():
    import os
    import socket
    import subprocess

    from celery_stack_core.identity import boot_id, owner_is_gone

    child = subprocess.Popen(["true"])
    child.wait()
    host, boot = socket.gethostname(), boot_id()
    me = f"host:{host}:{os.getpid()}:{boot}"
    assert owner_is_gone(f"host:{host}:{child.pid}:{boot}", me=me)
    assert not owner_is_gone(f"host:{host}:{os.getppid()}:{boot}", me=me)  # alive
    assert not owner_is_gone(f"host:elsewhere:{child.pid}:{boot}", me=me)  # another machine
    assert not owner_is_gone(f"host:{host}:{child.pid}:otherboot", me=me)  # before a reboot
    assert not owner_is_gone(None, me=me) and not owner_is_gone("garbage", me=me)
    pod = "pod:uid-1:1"
    assert owner_is_gone(f"pod:uid-1:{child.pid}", me=pod)  # same pod
    assert not owner_is_gone(f"pod:uid-2:{child.pid}", me=pod)  # another pod
