"""Retention, in short batched transactions (JANITOR_BATCH_SIZE rows each, at most
JANITOR_MAX_BATCHES per part per run):

    findings      of scans that finished more than RETENTION_FINDINGS_DAYS ago
    outbox        rows sent more than RETENTION_OUTBOX_DAYS ago
    dead-scans    scans `dead` for more than RETENTION_DEAD_SCANS_DAYS (findings cascade)
    ledger        counter_batches rows older than RETENTION_LEDGER_DAYS whose batch can no longer
                  be resumed: no shard's in-flight batch id in Redis names it (docs/counters.md
                  gives the argument; the settings refuse a retention that is not far longer
                  than the counters time limit)

A dry run counts the rows each part would delete with the same predicate and bound; the real
run deletes them batch by batch, each batch its own transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Table, delete, func, select
from sqlalchemy.sql import Select

from celery_stack_core.models import TERMINAL_STATUSES, CounterBatch, Finding, Outbox, Scan
from celery_stack_core.sweeps.base import Action, Recorder, SweepContext, SweepReport
from celery_stack_core.sweeps.counters import current_batches

NAME = "retention"
findings, outbox, scans, ledger = (
    Finding.__table__,
    Outbox.__table__,
    Scan.__table__,
    CounterBatch.__table__,
)


def _ago(days: float) -> ColumnElement[datetime]:
    return func.now() - timedelta(days=days)


def _parts(
    ctx: SweepContext, live_batches: list[uuid.UUID]
) -> dict[str, tuple[Table, Select[Any]]]:
    """part -> (table, SELECT of the key column of eligible rows, unbounded)."""
    s = ctx.settings
    old_finished = select(scans.c.id).where(
        scans.c.status.in_(TERMINAL_STATUSES),
        scans.c.finished_at < _ago(s.janitor.retention_findings_days),
    )
    ledger_old = select(ledger.c.batch_id).where(
        ledger.c.applied_at < _ago(s.janitor.retention_ledger_days)
    )
    if live_batches:
        ledger_old = ledger_old.where(ledger.c.batch_id.not_in(live_batches))
    return {
        "findings": (findings, select(findings.c.id).where(findings.c.scan_id.in_(old_finished))),
        "outbox": (
            outbox,
            select(outbox.c.id).where(outbox.c.sent_at < _ago(s.janitor.retention_outbox_days)),
        ),
        "dead-scans": (
            scans,
            select(scans.c.id).where(
                scans.c.status == "dead",
                scans.c.finished_at < _ago(s.janitor.retention_dead_scans_days),
            ),
        ),
        "ledger": (ledger, ledger_old),
    }


async def _count(ctx: SweepContext, eligible: Select[Any], bound: int) -> int:
    async with ctx.engine.connect() as conn:
        sub = eligible.limit(bound).subquery()
        return int((await conn.execute(select(func.count()).select_from(sub))).scalar_one())


async def _purge(
    ctx: SweepContext, table: Table, eligible: Select[Any], on_batch: Callable[[int], None]
) -> None:
    key = next(iter(table.primary_key.columns))
    size = ctx.settings.janitor.batch_size
    for _ in range(ctx.settings.janitor.max_batches):
        async with ctx.engine.begin() as conn:
            res = await conn.execute(
                delete(table).where(key.in_(eligible.limit(size).scalar_subquery()))
            )
        n = int(res.rowcount or 0)
        if n:
            on_batch(n)
        if n < size:
            return


async def sweep(ctx: SweepContext, *, dry_run: bool) -> SweepReport:
    rec = Recorder(ctx, NAME, dry_run=dry_run)
    live = [uuid.UUID(b) for b in (await current_batches(ctx)).values()]
    bound = ctx.settings.janitor.batch_size * ctx.settings.janitor.max_batches
    for part, (table, eligible) in _parts(ctx, live).items():
        action = Action("purge", part)
        if dry_run:
            n = await _count(ctx, eligible, bound)
            rec.examined(n)
            if n:
                rec.found(action)
                rec.done(action, n)
            continue
        purged: list[int] = []

        def batch_done(n: int, action: Action = action, purged: list[int] = purged) -> None:
            purged.append(n)
            rec.done(action, n)

        await _purge(ctx, table, eligible, batch_done)
        rec.examined(sum(purged))
        if purged:
            rec.found(action)
    return rec.finish()
