"""One delivery of one scan attempt: claim, scan with heartbeat and checkpoints, finish.

The Celery task (tasks.py) is a thin shell over `run_scan`; its dependencies are arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from celery_stack_core import metrics
from celery_stack_core.identity import owner_is_gone
from celery_stack_core.retry import with_retry
from celery_stack_core.scan_spec import ScanConfig
from celery_stack_scans import lifecycle
from celery_stack_scans.checks import Finding
from celery_stack_scans.lifecycle import Progress
from celery_stack_scans.scanner import ScanFailed, ScanOptions, scan

log = logging.getLogger(__name__)

# (step, domain) -> None or an awaitable, called at "claimed" and before every checkpoint.
# None in production; only tests set it (to kill the process or delete the row at a step).
StepHook = Callable[[str, str], Awaitable[None] | None]
step_hook: StepHook | None = None


async def _step(step: str, domain: str) -> None:
    if step_hook is not None:
        result = step_hook(step, domain)
        if inspect.isawaitable(result):
            await result


@dataclass(frozen=True)
class RunLimits:
    heartbeat_interval: float
    stale_after: float
    max_deliveries: int
    deadline: float  # seconds this delivery may take, inside the queue's soft time limit


async def _claim(
    engine: AsyncEngine, scan_id: uuid.UUID, attempt: int, worker: str, limits: RunLimits
) -> lifecycle.Claim:
    while True:
        claim = await with_retry(
            lambda: lifecycle.claim(
                engine,
                scan_id,
                attempt,
                worker,
                stale_after=limits.stale_after,
                max_deliveries=limits.max_deliveries,
            ),
            what="scan claim",
        )
        if claim.outcome != "busy":
            return claim
        holder = await lifecycle.holder(engine, scan_id)
        if owner_is_gone(holder, me=worker):
            await lifecycle.release_dead(engine, scan_id, attempt, holder or "")
            continue
        await asyncio.sleep(limits.heartbeat_interval)


def _noop(reason: str, scan_id: uuid.UUID, **extra: object) -> str:
    metrics.SCAN_NOOPS.labels(reason).inc()
    log.info("scan message is a no-op", extra={"scan_id": str(scan_id), "reason": reason, **extra})
    return reason


async def run_scan(
    engine: AsyncEngine,
    scan_id: uuid.UUID,
    attempt: int,
    *,
    worker: str,
    options: ScanOptions,
    limits: RunLimits,
) -> str:
    """Returns what happened: succeeded, failed, dead, or the no-op reason."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(limits.deadline):
            claim = await _claim(engine, scan_id, attempt, worker, limits)
    except TimeoutError:
        return _noop("taken", scan_id, note="another worker kept the scan past our deadline")
    if claim.outcome == "gone":
        # Deleted while queued: nothing to do, nothing to write (field report 002).
        return _noop("row_gone", scan_id)
    if claim.outcome in ("stale_attempt", "finished"):
        return _noop(claim.outcome, scan_id, status=claim.status)
    if claim.outcome == "dead":
        metrics.SCANS_DEAD.inc()
        metrics.SCANS_FINISHED.labels("dead").inc()
        log.error(
            "scan is dead: redelivery cap reached",
            extra={"scan_id": str(scan_id), "attempt": attempt, "deliveries": claim.deliveries},
        )
        return "dead"
    if claim.deliveries > 1:
        metrics.SCAN_REDELIVERIES.inc()
    else:
        metrics.SCAN_DISPATCH_LATENCY.observe(claim.queued_for)
    log.info(
        "scan started",
        extra={
            "scan_id": str(scan_id),
            "attempt": attempt,
            "domain": claim.domain,
            "delivery": claim.deliveries,
        },
    )
    await _step("claimed", claim.domain)

    stop: list[Progress] = []

    async def beat() -> None:
        while not stop:
            await asyncio.sleep(limits.heartbeat_interval)
            try:
                progress = await lifecycle.heartbeat(engine, scan_id, attempt, worker)
            except Exception as exc:
                # A database blip: the next beat tries again; a long outage makes the
                # heartbeat stale, and the scan is then someone else's to take over.
                log.warning(
                    "scan heartbeat failed", extra={"scan_id": str(scan_id), "error": repr(exc)}
                )
                continue
            if progress != "ok":
                stop.append(progress)

    async def checkpoint(found: list[Finding]) -> bool:
        await _step("checkpoint", claim.domain)
        if stop:
            return False
        progress = await with_retry(
            lambda: lifecycle.checkpoint(engine, scan_id, attempt, worker, found),
            what="scan checkpoint",
        )
        if progress != "ok":
            stop.append(progress)
            return False
        return True

    status: str = "succeeded"
    error: str | None = None
    beater = asyncio.create_task(beat())
    try:
        config = ScanConfig.model_validate(claim.config or {})
        remaining = max(0.05, limits.deadline - (time.monotonic() - started))
        async with asyncio.timeout(remaining):
            summary = await scan(claim.domain, config, options, checkpoint)
        if summary.stopped and not stop:
            stop.append("lost")
    except ScanFailed as exc:
        status, error = "failed", str(exc)
    except ValidationError as exc:
        status, error = "failed", f"invalid stored config: {exc.errors()[:1]}"
    except TimeoutError:
        status, error = "failed", f"scan exceeded its time limit ({limits.deadline:.0f}s)"
    except Exception as exc:
        log.exception("scan crashed", extra={"scan_id": str(scan_id)})
        status, error = "failed", f"internal error: {exc!r}"[:500]
    finally:
        beater.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beater
        metrics.SCAN_DURATION.observe(time.monotonic() - started)

    if stop:
        return _stopped(stop[0], scan_id)
    progress = await with_retry(
        lambda: lifecycle.finish(engine, scan_id, attempt, worker, status, error),  # type: ignore[arg-type]
        what="scan finish",
    )
    if progress != "ok":
        return _stopped(progress, scan_id)
    metrics.SCANS_FINISHED.labels(status).inc()
    log.info(
        "scan finished",
        extra={"scan_id": str(scan_id), "attempt": attempt, "status": status, "error": error},
    )
    return status


def _stopped(progress: Progress, scan_id: uuid.UUID) -> str:
    if progress == "gone":
        return _noop("row_gone", scan_id, note="deleted while running")
    if progress == "cancelled":
        log.info("scan cancelled; stopped at a checkpoint", extra={"scan_id": str(scan_id)})
        return "cancelled"
    return _noop("taken", scan_id, note="retried or taken over while running")
