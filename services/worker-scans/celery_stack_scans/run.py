"""One delivery of one scan attempt: claim, scan with heartbeat and checkpoints, finish.

The Celery task (tasks.py) is a thin shell over `run_scan`; its dependencies are arguments.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Literal

from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from celery_stack_core import metrics
from celery_stack_core.hooks import HOOKS
from celery_stack_core.identity import owner_is_gone
from celery_stack_core.retry import with_retry
from celery_stack_core.scan_spec import ScanConfig
from celery_stack_scans import lifecycle
from celery_stack_scans.checks import Finding
from celery_stack_scans.lifecycle import Delivery, Progress
from celery_stack_scans.scanner import ScanFailed, ScanOptions, scan

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunLimits:
    heartbeat_interval: float
    stale_after: float
    max_deliveries: int
    deadline: float  # seconds this delivery may take, inside the queue's soft time limit


async def _claim(engine: AsyncEngine, d: Delivery, limits: RunLimits) -> lifecycle.Claim:
    while True:
        claim = await with_retry(
            lambda: lifecycle.claim(
                engine, d, stale_after=limits.stale_after, max_deliveries=limits.max_deliveries
            ),
            what="scan claim",
        )
        if claim.outcome != "busy":
            return claim
        holder = await lifecycle.holder(engine, d.scan_id)
        if holder and owner_is_gone(holder, me=d.worker):
            await lifecycle.release_dead(engine, Delivery(d.scan_id, d.attempt, holder))
            continue
        await asyncio.sleep(limits.heartbeat_interval)


def _noop(reason: str, scan_id: uuid.UUID, **extra: object) -> str:
    metrics.SCAN_NOOPS.labels(reason).inc()
    log.info("scan message is a no-op", extra={"scan_id": str(scan_id), "reason": reason, **extra})
    return reason


async def run_scan(
    engine: AsyncEngine, d: Delivery, *, options: ScanOptions, limits: RunLimits
) -> str:
    """Returns what happened: succeeded, failed, dead, or the no-op reason."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(limits.deadline):
            claim = await _claim(engine, d, limits)
    except TimeoutError:
        return _noop("taken", d.scan_id, note="another worker kept the scan past our deadline")
    if claim.outcome != "claimed":
        return _not_claimed(claim, d)
    _started(claim, d)
    await HOOKS.reach("scans", "claimed", claim.domain)
    run = _Run(engine, d, limits)
    status, error = await run.scan(claim, options, limits.deadline - (time.monotonic() - started))
    metrics.SCAN_DURATION.observe(time.monotonic() - started)
    if run.stop:
        return _stopped(run.stop[0], d.scan_id)
    return await _finish(engine, d, status, error)


def _not_claimed(claim: lifecycle.Claim, d: Delivery) -> str:
    if claim.outcome == "gone":
        # Deleted while queued: nothing to do, nothing to write (field report 002).
        return _noop("row_gone", d.scan_id)
    if claim.outcome in ("stale_attempt", "finished"):
        return _noop(claim.outcome, d.scan_id, status=claim.status)
    metrics.SCANS_DEAD.inc()
    metrics.SCANS_FINISHED.labels("dead").inc()
    log.error(
        "scan is dead: redelivery cap reached",
        extra={"scan_id": str(d.scan_id), "attempt": d.attempt, "deliveries": claim.deliveries},
    )
    return "dead"


def _started(claim: lifecycle.Claim, d: Delivery) -> None:
    if claim.deliveries > 1:
        metrics.SCAN_REDELIVERIES.inc()
    else:
        metrics.SCAN_DISPATCH_LATENCY.observe(claim.queued_for)
    log.info(
        "scan started",
        extra={
            "scan_id": str(d.scan_id),
            "attempt": d.attempt,
            "domain": claim.domain,
            "delivery": claim.deliveries,
        },
    )


class _Run:
    """The claimed scan while it runs: a heartbeat task beside it and checkpoints inside it.
    `stop` gets the reason when the row stops being ours (cancelled, deleted, taken over)."""

    def __init__(self, engine: AsyncEngine, d: Delivery, limits: RunLimits) -> None:
        self.engine, self.d, self.limits = engine, d, limits
        self.stop: list[Progress] = []
        self.domain = ""

    async def scan(
        self, claim: lifecycle.Claim, options: ScanOptions, remaining: float
    ) -> tuple[Literal["succeeded", "failed"], str | None]:
        """(status, error) of the scan; a failure of the scan itself is a `failed` status."""
        self.domain = claim.domain
        beater = asyncio.create_task(self._beat())
        try:
            config = ScanConfig.model_validate(claim.config or {})
            async with asyncio.timeout(max(0.05, remaining)):
                summary = await scan(claim.domain, config, options, self._checkpoint)
            if summary.stopped and not self.stop:
                self.stop.append("lost")
            return "succeeded", None
        except ScanFailed as exc:
            return "failed", str(exc)
        except ValidationError as exc:
            return "failed", f"invalid stored config: {exc.errors()[:1]}"
        except TimeoutError:
            return "failed", f"scan exceeded its time limit ({self.limits.deadline:.0f}s)"
        except Exception as exc:
            log.exception("scan crashed", extra={"scan_id": str(self.d.scan_id)})
            return "failed", f"internal error: {exc!r}"[:500]
        finally:
            beater.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await beater

    async def _beat(self) -> None:
        while not self.stop:
            await asyncio.sleep(self.limits.heartbeat_interval)
            try:
                progress = await lifecycle.heartbeat(self.engine, self.d)
            except Exception as exc:
                # A database blip: the next beat tries again; a long outage makes the
                # heartbeat stale, and the scan is then someone else's to take over.
                log.warning(
                    "scan heartbeat failed",
                    extra={"scan_id": str(self.d.scan_id), "error": repr(exc)},
                )
                continue
            if progress != "ok":
                self.stop.append(progress)

    async def _checkpoint(self, found: list[Finding]) -> bool:
        await HOOKS.reach("scans", "checkpoint", self.domain)
        if self.stop:
            return False
        progress = await with_retry(
            lambda: lifecycle.checkpoint(self.engine, self.d, found), what="scan checkpoint"
        )
        if progress != "ok":
            self.stop.append(progress)
            return False
        return True


async def _finish(
    engine: AsyncEngine, d: Delivery, status: Literal["succeeded", "failed"], error: str | None
) -> str:
    progress = await with_retry(
        lambda: lifecycle.finish(engine, d, status=status, error=error), what="scan finish"
    )
    if progress != "ok":
        return _stopped(progress, d.scan_id)
    metrics.SCANS_FINISHED.labels(status).inc()
    log.info(
        "scan finished",
        extra={"scan_id": str(d.scan_id), "attempt": d.attempt, "status": status, "error": error},
    )
    return status


def _stopped(progress: Progress, scan_id: uuid.UUID) -> str:
    if progress == "gone":
        return _noop("row_gone", scan_id, note="deleted while running")
    if progress == "cancelled":
        log.info("scan cancelled; stopped at a checkpoint", extra={"scan_id": str(scan_id)})
        return "cancelled"
    return _noop("taken", scan_id, note="retried or taken over while running")
