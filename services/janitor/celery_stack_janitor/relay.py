"""The outbox relay: what the API could not publish after COMMIT (it crashed, or the broker was
down) is sent from here, every OUTBOX_RELAY_INTERVAL seconds via beat."""

from __future__ import annotations

from celery import Celery
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from celery_stack_core import metrics, outbox
from celery_stack_core.models import LIVE_STATUSES, Scan

SCANS = Scan.__table__


async def relay_all(
    engine: AsyncEngine, app: Celery, *, batch_size: int, min_age: float, max_batches: int = 20
) -> int:
    """Send batches until none is left (bounded), then update the backlog gauges."""
    publish = outbox.celery_publisher(app)
    total = 0
    for _ in range(max_batches):
        result = await outbox.relay(engine, publish, batch_size=batch_size, min_age=min_age)
        total += result.sent
        if result.failed or result.sent < batch_size:
            break
    await record_gauges(engine)
    return total


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
