"""Gauges of work waiting, read from the tables after each relay run (the maintenance worker
exports them): the outbox backlog and its oldest row, and the scans queued or running."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from celery_stack_core import metrics, outbox
from celery_stack_core.models import LIVE_STATUSES, Scan

SCANS = Scan.__table__


async def record_gauges(engine: AsyncEngine) -> None:
    backlog, age = await outbox.backlog(engine)
    metrics.OUTBOX_BACKLOG.set(backlog)
    metrics.OUTBOX_OLDEST_AGE.set(age)
    # Only the live states: they are few and indexed; finished scans are counted as they
    # finish (celery_stack_scans_finished_total), never by scanning the whole table.
    stmt = (
        select(SCANS.c.status, func.count())
        .where(SCANS.c.status.in_(LIVE_STATUSES))
        .group_by(SCANS.c.status)
    )
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    counts = {str(status): int(n) for status, n in rows}
    for status in LIVE_STATUSES:
        metrics.SCANS_BY_STATUS.labels(status).set(counts.get(status, 0))
