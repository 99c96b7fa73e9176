"""Celery tasks of the scans queue: a thin shell over run.run_scan.

acks_late, reject_on_worker_lost and prefetch 1 come from the core Celery config, and the
soft/hard time limits from the scans queue's settings (SCANS_*TIME_LIMIT, annotations by
queue). The scan's own deadline sits inside the soft limit so the scan fails cleanly before
Celery has to interrupt it.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery.exceptions import Reject, SoftTimeLimitExceeded
from opentelemetry import context as otel_context
from opentelemetry import trace

from celery_stack_core import aio, connections
from celery_stack_core.celery_app import make_celery
from celery_stack_core.config import get_settings
from celery_stack_core.identity import owner_id
from celery_stack_core.scan_spec import SCAN_TASK
from celery_stack_core.tracing import extract_context
from celery_stack_core.worker import install_hooks
from celery_stack_scans import lifecycle
from celery_stack_scans.lifecycle import Delivery
from celery_stack_scans.run import RunLimits, run_scan
from celery_stack_scans.scanner import ScanOptions

log = logging.getLogger(__name__)
settings = get_settings()
app = make_celery(settings, "celery_stack_scans")
install_hooks(app, settings, "worker-scans")
tracer = trace.get_tracer(__name__)
TRACE_HEADERS = ("traceparent", "tracestate")


def limits() -> RunLimits:
    soft = settings.queue("scans").soft_time_limit
    return RunLimits(
        heartbeat_interval=settings.scans.heartbeat_interval,
        stale_after=settings.scans.heartbeat_stale,
        max_deliveries=settings.scans.max_deliveries,
        deadline=max(1.0, soft - min(5.0, soft * 0.1)),
    )


def trace_carrier(request: Any) -> dict[str, str]:
    """The W3C context the outbox row carried, from the message headers."""
    headers = getattr(request, "headers", None) or {}
    out: dict[str, str] = {}
    for name in TRACE_HEADERS:
        value = headers.get(name) or getattr(request, name, None)
        if isinstance(value, str):
            out[name] = value
    return out


async def _traced(carrier: dict[str, str], scan_id: str, attempt: int, worker: str) -> str:
    # Attached inside the coroutine: aio.run executes in the event loop's own contextvars
    # context, so a context attached by the calling frame would not be seen here.
    token = otel_context.attach(extract_context(carrier))
    try:
        with tracer.start_as_current_span("scans.run", attributes={"scan.id": scan_id}):
            return await run_scan(
                connections.engine(),
                Delivery(uuid.UUID(scan_id), attempt, worker),
                options=ScanOptions.from_settings(settings),
                limits=limits(),
            )
    finally:
        otel_context.detach(token)


# Nothing may ack a scan's message before its row is terminal (there is no stuck-scan sweep):
# with acks_on_failure_or_timeout=False a hard time limit requeues it, and an exception is
# turned into a Reject with requeue, because a plain failure would still lose the message (on
# the Redis transport reject(requeue=False) deletes it). The redelivery takes the released row
# over as a new delivery; the delivery cap ends a scan that always fails this way as dead.
@app.task(name=SCAN_TASK, bind=True, acks_on_failure_or_timeout=False)
def run(self: Any, scan_id: str, attempt: int) -> str:
    worker = owner_id(settings)
    try:
        try:
            return aio.run(_traced(trace_carrier(self.request), scan_id, attempt, worker))
        except SoftTimeLimitExceeded:
            # Only if the scan's own deadline did not fire first (aio.run has cancelled the
            # interrupted scan coroutine by now): record the failure, once.
            aio.run(
                lifecycle.finish(
                    connections.engine(),
                    Delivery(uuid.UUID(scan_id), attempt, worker),
                    status="failed",
                    error="soft time limit exceeded",
                )
            )
            return "failed"
    except Exception as exc:
        # Give the row up first, so the redelivery (even to this process) counts toward the
        # delivery cap instead of looping; if the database is what failed, this may fail too
        # and the redelivery's claim waits on it with backoff.
        _give_up(Delivery(uuid.UUID(scan_id), attempt, worker))
        raise Reject(f"scan task raised {exc!r}"[:300], requeue=True) from exc


def _give_up(d: Delivery) -> None:
    try:
        aio.run(lifecycle.release_dead(connections.engine(), d))
    except Exception as exc:
        log.warning(
            "could not release a failed scan; its redelivery waits for the stale heartbeat",
            extra={"scan_id": str(d.scan_id), "attempt": d.attempt, "error": repr(exc)},
        )
