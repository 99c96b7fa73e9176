"""Stuck scans: `running` with a heartbeat older than SCAN_HEARTBEAT_STALE plus
JANITOR_STUCK_SCAN_GRACE and a worker that is gone (owners.judge). Typical cause: the whole
worker was killed, so its unacked message waits for the broker's visibility timeout (an hour)
before anyone sees it again.

A stuck scan is requeued as a new attempt through the outbox (attempt + 1, same row, new task id
`scan-<id>-<attempt+1>`), or marked `dead` once its deliveries reached SCAN_MAX_DELIVERIES: the
delivery count carries over to the new attempt, so a scan that kills every worker still ends.
The update is a compare-and-set on what the janitor read (status, attempt, worker, heartbeat):
a scan whose worker beat in between is left alone. The old attempt's message, when it comes
back, is a clean no-op (`stale_attempt`) in worker-scans.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, func, or_, select, update

from celery_stack_core import outbox
from celery_stack_core.models import Scan
from celery_stack_core.scan_spec import SCAN_TASK, task_id
from celery_stack_core.sweeps.base import Action, Recorder, SweepContext, SweepReport
from celery_stack_core.sweeps.owners import Verdict, judge, parse_owner

NAME = "stuck-scans"
scans = Scan.__table__


@dataclass(frozen=True)
class Running:
    id: uuid.UUID
    attempt: int
    deliveries: int
    worker: str | None
    heartbeat_at: datetime | None
    silence: float


async def running_scans(
    ctx: SweepContext, *, stale_after: float, worker_like: str = ""
) -> list[Running]:
    silence = func.extract("epoch", func.now() - scans.c.heartbeat_at)
    stmt = (
        select(
            scans.c.id,
            scans.c.attempt,
            scans.c.deliveries,
            scans.c.worker,
            scans.c.heartbeat_at,
            silence.label("silence"),
        )
        .where(scans.c.status == "running")
        .order_by(scans.c.heartbeat_at.asc().nulls_first())
        .limit(ctx.settings.janitor.batch_size)
    )
    if worker_like:
        stmt = stmt.where(scans.c.worker.like(worker_like))
    else:
        cutoff = func.now() - timedelta(seconds=stale_after)
        stmt = stmt.where(or_(scans.c.heartbeat_at.is_(None), scans.c.heartbeat_at < cutoff))
    async with ctx.engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    return [
        Running(
            r.id,
            r.attempt,
            r.deliveries,
            r.worker,
            r.heartbeat_at,
            math.inf if r.silence is None else float(r.silence),
        )
        for r in rows
    ]


def plan_for(ctx: SweepContext, scan: Running) -> Action:
    target = str(scan.id)
    if scan.deliveries >= ctx.settings.scans.max_deliveries:
        return Action("dead", target, (("attempt", scan.attempt), ("worker", scan.worker)))
    return Action("requeue", target, (("attempt", scan.attempt + 1), ("worker", scan.worker)))


async def apply(ctx: SweepContext, rec: Recorder, scan: Running, action: Action) -> None:
    """Compare-and-set on the observed row, plus the outbox row of the new attempt, in one
    transaction; the message is published after COMMIT (or by the relay)."""
    same = and_(
        scans.c.id == scan.id,
        scans.c.status == "running",
        scans.c.attempt == scan.attempt,
        scans.c.worker.is_not_distinct_from(scan.worker),
        scans.c.heartbeat_at.is_not_distinct_from(scan.heartbeat_at),
    )
    values: dict[str, object]
    if action.action == "dead":
        values = {
            "status": "dead",
            "finished_at": func.now(),
            "heartbeat_at": None,
            "error": f"dead: its worker {scan.worker} is gone and the delivery cap is reached "
            f"({scan.deliveries} deliveries); found by the janitor",
        }
    else:
        values = {
            "status": "queued",
            "attempt": scan.attempt + 1,
            "worker": None,
            "heartbeat_at": None,
            "queued_at": func.now(),
        }
    msg = None
    async with ctx.engine.begin() as conn:
        changed = await conn.execute(
            update(scans).where(same).values(**values).returning(scans.c.id)
        )
        if changed.first() is None:
            rec.skip("changed", action.target)
            return
        if action.action == "requeue":
            sid, attempt = str(scan.id), scan.attempt + 1
            msg = await outbox.add(
                conn, task_name=SCAN_TASK, task_id=task_id(sid, attempt), args=[sid, attempt]
            )
    rec.done(action)
    if msg is not None and ctx.publish is not None:
        await outbox.publish_now(ctx.engine, ctx.publish, msg)


async def settle(ctx: SweepContext, rec: Recorder, found: list[tuple[Running, Verdict]]) -> None:
    for scan, v in found:
        if not v.gone:
            rec.skip(v.reason, str(scan.id))
            continue
        action = plan_for(ctx, scan)
        rec.found(action)
        if rec.dry_run:
            rec.done(action)
        else:
            await apply(ctx, rec, scan, action)


async def sweep(ctx: SweepContext, *, dry_run: bool) -> SweepReport:
    rec = Recorder(ctx, NAME, dry_run=dry_run)
    stale = ctx.settings.scans.heartbeat_stale + ctx.settings.janitor.stuck_scan_grace
    found = await running_scans(ctx, stale_after=stale)
    rec.examined(len(found))
    pods = await ctx.pods()  # after the rows were read: see owners.py
    verdicts = [
        (
            s,
            judge(parse_owner(s.worker), silence=s.silence, grace=stale, pods=pods)
            if s.worker
            else Verdict(True, "no_worker"),
        )
        for s in found
    ]
    await settle(ctx, rec, verdicts)
    return rec.finish()
