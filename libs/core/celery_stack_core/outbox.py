"""Transactional outbox (DESIGN "Scans: no race, no orphans"; field report 004).

    BEGIN; INSERT the row the task is about; add(conn, ...) -> outbox row; COMMIT
    -> publish(message) -> mark_sent(id)                     (the API, right after COMMIT)
    relay(): unsent rows older than a moment, FOR UPDATE SKIP LOCKED -> publish -> sent
                                                              (maintenance queue, after a crash)

A message exists only if its row committed, so a worker can never run before the row it needs
(no countdown, no "created" marker, no existence-check loop). Publishing is at least once: a
crash between publish and mark_sent sends the row again, with the same task id; consumers are
idempotent per task id. The row carries the W3C trace context of the request that wrote it, and
the message carries it on, so the worker continues that trace.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from celery import Celery
from opentelemetry import context as otel_context
from opentelemetry import trace
from sqlalchemy import Update, extract, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from celery_stack_core import metrics
from celery_stack_core.celery_app import queue_of
from celery_stack_core.models import Outbox
from celery_stack_core.tracing import extract_context, inject_context

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)
OUTBOX = Outbox.__table__


@dataclass(frozen=True)
class OutboxMessage:
    id: int
    task_name: str
    task_id: str
    args: list[Any]
    kwargs: dict[str, Any] = field(default_factory=dict)
    trace_context: dict[str, str] = field(default_factory=dict)


Publisher = Callable[[OutboxMessage], Awaitable[None]]


async def add(
    conn: AsyncConnection,
    *,
    task_name: str,
    task_id: str,
    args: list[Any],
    kwargs: dict[str, Any] | None = None,
) -> OutboxMessage:
    """Write one message in the caller's transaction; it exists only if that transaction commits."""
    queue = queue_of(task_name)  # an unroutable task is refused before anything is written
    carrier = inject_context()
    res = await conn.execute(
        insert(OUTBOX)
        .values(
            task_name=task_name,
            task_id=task_id,
            queue=queue,
            args=args,
            kwargs=kwargs or {},
            trace_context=carrier,
        )
        .returning(OUTBOX.c.id)
    )
    return OutboxMessage(res.scalar_one(), task_name, task_id, args, kwargs or {}, carrier)


def send(app: Celery, msg: OutboxMessage) -> None:
    """Publish synchronously. The trace context goes in the message headers; inside a span whose
    parent is the stored context, so Celery's own instrumentation (when on) continues it too."""
    token = otel_context.attach(extract_context(msg.trace_context))
    try:
        with tracer.start_as_current_span("outbox.publish", attributes={"task": msg.task_name}):
            app.send_task(
                msg.task_name,
                args=msg.args,
                kwargs=msg.kwargs,
                task_id=msg.task_id,
                headers=dict(msg.trace_context),
                # Fail fast when the broker is down: the row stays unsent and the relay sends it.
                retry=False,
                # nobody waits on this result here (and waiting would subscribe to the backend)
                ignore_result=True,
            )
    finally:
        otel_context.detach(token)


def fail_fast(app: Celery) -> Celery:
    """Make a producer-only app give up on an unreachable broker at once instead of retrying
    the connection: the row is safe in the outbox, and a request must not hang on Redis."""
    app.conf.broker_transport_options = {
        **app.conf.broker_transport_options,
        "max_retries": 0,
        "interval_start": 0,
        "interval_step": 0.1,
        "interval_max": 0.1,
    }
    return app


def celery_publisher(app: Celery) -> Publisher:
    async def publish(msg: OutboxMessage) -> None:
        # kombu is blocking: keep the event loop free while the broker answers.
        await asyncio.to_thread(send, app, msg)

    return publish


async def mark_sent(engine: AsyncEngine, ids: list[int]) -> int:
    async with engine.begin() as conn:
        res = await conn.execute(_sent(ids).where(OUTBOX.c.sent_at.is_(None)))
        return int(res.rowcount or 0)


def _sent(ids: list[int]) -> Update:
    return (
        update(OUTBOX)
        .where(OUTBOX.c.id.in_(ids))
        .values(sent_at=func.now(), attempts=OUTBOX.c.attempts + 1)
    )


async def publish_now(engine: AsyncEngine, publish: Publisher, msg: OutboxMessage) -> bool:
    """After COMMIT: publish and mark sent. A failure is logged and left to the relay."""
    try:
        await publish(msg)
    except Exception as exc:
        metrics.OUTBOX_PUBLISH_FAILURES.labels("api").inc()
        log.warning(
            "publish after commit failed; the outbox relay will send it",
            extra={"outbox_id": msg.id, "task_id": msg.task_id, "error": repr(exc)},
        )
        return False
    try:
        await mark_sent(engine, [msg.id])
    except Exception as exc:
        # Published but not marked: the relay sends it again (same task id; consumers dedupe).
        log.warning(
            "could not mark an outbox row sent",
            extra={"outbox_id": msg.id, "error": repr(exc)},
        )
    metrics.OUTBOX_SENT.labels("api").inc()
    return True


def _message(row: Any) -> OutboxMessage:
    return OutboxMessage(
        id=int(row.id),
        task_name=row.task_name,
        task_id=row.task_id,
        args=list(row.args),
        kwargs=dict(row.kwargs),
        trace_context=dict(row.trace_context),
    )


def _seconds(value: float) -> Any:
    return func.make_interval(0, 0, 0, 0, 0, 0, value)


@dataclass(frozen=True)
class RelayResult:
    sent: int
    failed: int


async def relay(
    engine: AsyncEngine, publish: Publisher, *, batch_size: int, min_age: float
) -> RelayResult:
    """Send one batch of rows left unsent for longer than `min_age` seconds.

    The rows stay locked (FOR UPDATE SKIP LOCKED) from SELECT to COMMIT, so two relays never
    send the same row; a relay killed mid-batch sends nothing twice except rows it published
    but had not committed as sent (at least once; the task id is the same).
    """
    sent: list[int] = []
    failed = 0
    c = OUTBOX.c
    unsent = (
        select(c.id, c.task_name, c.task_id, c.args, c.kwargs, c.trace_context)
        .where(c.sent_at.is_(None), c.created_at < func.now() - _seconds(min_age))
        .order_by(c.created_at)
        .limit(batch_size)
        # SKIP LOCKED: concurrent relays split the backlog instead of sending a row twice.
        .with_for_update(skip_locked=True)
    )
    async with engine.begin() as conn:
        for row in (await conn.execute(unsent)).all():
            msg = _message(row)
            try:
                await publish(msg)
            except Exception as exc:
                failed += 1
                metrics.OUTBOX_PUBLISH_FAILURES.labels("relay").inc()
                await conn.execute(
                    update(OUTBOX)
                    .where(c.id == msg.id)
                    .values(attempts=c.attempts + 1, last_error=repr(exc)[:500])
                )
                log.warning(
                    "outbox relay could not publish; the rest of the batch waits",
                    extra={"outbox_id": msg.id, "task_id": msg.task_id, "error": repr(exc)},
                )
                # The broker is most likely down: the rest of the batch would fail the same way.
                break
            sent.append(msg.id)
        if sent:
            await conn.execute(_sent(sent))
    if sent:
        metrics.OUTBOX_SENT.labels("relay").inc(len(sent))
        log.info("outbox relay sent unsent rows", extra={"sent": len(sent), "failed": failed})
    return RelayResult(len(sent), failed)


async def backlog(engine: AsyncEngine) -> tuple[int, float]:
    """Unsent rows and the age in seconds of the oldest one (0 when none)."""
    c = OUTBOX.c
    query = select(
        func.count().label("n"),
        func.coalesce(extract("epoch", func.now() - func.min(c.created_at)), 0).label("age"),
    ).where(c.sent_at.is_(None))
    async with engine.connect() as conn:
        row = (await conn.execute(query)).one()
    return int(row.n), float(row.age)
