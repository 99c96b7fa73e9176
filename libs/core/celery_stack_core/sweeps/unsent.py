"""Unsent outbox rows older than JANITOR_OUTBOX_MAX_AGE: the relay (every few seconds) should
have sent them, so they mean the relay is down or failing. The janitor publishes exactly the rows
it planned, each still unsent and not locked by a relay at that moment (SKIP LOCKED), and marks
them sent in the same transaction, like the relay does (celery_stack_core.outbox)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select, update

from celery_stack_core import outbox
from celery_stack_core.models import Outbox
from celery_stack_core.sweeps.base import Action, Recorder, SweepContext, SweepReport

NAME = "outbox"
rows = Outbox.__table__


async def sweep(ctx: SweepContext, *, dry_run: bool) -> SweepReport:
    rec = Recorder(ctx, NAME, dry_run=dry_run)
    cutoff = func.now() - timedelta(seconds=ctx.settings.janitor.outbox_max_age)
    old = (
        select(rows.c.id, rows.c.task_id)
        .where(rows.c.sent_at.is_(None), rows.c.created_at < cutoff)
        .order_by(rows.c.created_at)
        .limit(ctx.settings.janitor.batch_size)
    )
    async with ctx.engine.connect() as conn:
        planned = (await conn.execute(old)).all()
    rec.examined(len(planned))
    actions = {r.id: Action("publish", str(r.id), (("task_id", r.task_id),)) for r in planned}
    for action in actions.values():
        rec.found(action)
    if dry_run:
        for action in actions.values():
            rec.done(action)
    elif actions:
        await _publish(ctx, rec, actions)
    return rec.finish()


async def _publish(ctx: SweepContext, rec: Recorder, actions: dict[int, Action]) -> None:
    if ctx.publish is None:
        rec.skip("no_producer", n=len(actions))
        return
    lock = (
        select(
            rows.c.id,
            rows.c.task_name,
            rows.c.task_id,
            rows.c.args,
            rows.c.kwargs,
            rows.c.trace_context,
        )
        .where(rows.c.id.in_(list(actions)), rows.c.sent_at.is_(None))
        .with_for_update(skip_locked=True)
    )
    async with ctx.engine.begin() as conn:
        sent: list[int] = []
        for row in (await conn.execute(lock)).all():
            msg = outbox.OutboxMessage(
                row.id,
                row.task_name,
                row.task_id,
                list(row.args),
                dict(row.kwargs),
                dict(row.trace_context),
            )
            await ctx.publish(msg)
            sent.append(row.id)
        if sent:
            await conn.execute(
                update(rows)
                .where(rows.c.id.in_(sent))
                .values(sent_at=func.now(), attempts=rows.c.attempts + 1)
            )
    for oid, action in actions.items():
        if oid in sent:
            rec.done(action)
        else:
            rec.skip("changed", action.target)
