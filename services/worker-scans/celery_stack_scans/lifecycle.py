"""A scan row's life on the worker side, each step one short transaction on the locked row.

    claim       queued (or running with a stale heartbeat) -> running, deliveries += 1;
                past SCAN_MAX_DELIVERIES -> dead with the reason
    checkpoint  still ours? heartbeat; findings INSERT ... ON CONFLICT DO NOTHING
    finish      running (ours) -> exactly one terminal state

"Ours" means status running, this attempt and this worker identity: a cancelled, deleted,
retried or taken-over scan fails that test and the worker stops. Every step locks the row
first (SELECT ... FOR UPDATE), so a concurrent DELETE waits or has already happened: findings
are never inserted for a row that is gone, hence never an FK error.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import ColumnElement, Update, and_, extract, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from celery_stack_core.models import LIVE_STATUSES, Scan
from celery_stack_core.models import Finding as FindingRow
from celery_stack_scans.checks import Finding

ClaimOutcome = Literal["claimed", "gone", "stale_attempt", "finished", "busy", "dead"]
Progress = Literal["ok", "gone", "cancelled", "lost"]

SCANS = Scan.__table__
FINDINGS = FindingRow.__table__


@dataclass(frozen=True)
class Delivery:
    """One delivery of one attempt of a scan, by one worker: what "ours" means."""

    scan_id: uuid.UUID
    attempt: int
    worker: str


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    domain: str = ""
    config: dict[str, object] | None = None
    deliveries: int = 0
    queued_for: float = 0.0  # seconds from queued_at to this claim (dispatch latency)
    status: str = ""


@dataclass(frozen=True)
class Locked:
    """The scan row as a step sees it, locked until the step's transaction ends."""

    status: str
    attempt: int
    deliveries: int
    worker: str | None
    domain: str
    config: dict[str, object]
    hb_age: float | None  # seconds since the last heartbeat; None once released
    queued_for: float


def _age(column: ColumnElement[Any]) -> ColumnElement[Any]:
    """Seconds from `column` to now (NULL when it is NULL)."""
    return extract("epoch", func.now() - column)


async def _locked(conn: AsyncConnection, scan_id: uuid.UUID) -> Locked | None:
    c = SCANS.c
    query = (
        select(
            c.status,
            c.attempt,
            c.deliveries,
            c.worker,
            c.domain,
            c.config,
            _age(c.heartbeat_at).label("hb_age"),
            _age(c.queued_at).label("queued_for"),
        )
        .where(c.id == scan_id)
        .with_for_update()
    )
    row = (await conn.execute(query)).mappings().first()
    if row is None:
        return None
    hb_age = row["hb_age"]
    return Locked(
        status=str(row["status"]),
        attempt=int(row["attempt"]),
        deliveries=int(row["deliveries"]),
        worker=row["worker"],
        domain=str(row["domain"]),
        config=dict(row["config"]),
        hb_age=None if hb_age is None else float(hb_age),
        queued_for=float(row["queued_for"]),
    )


def _update(scan_id: uuid.UUID) -> Update:
    return update(SCANS).where(SCANS.c.id == scan_id)


async def claim(
    engine: AsyncEngine, d: Delivery, *, stale_after: float, max_deliveries: int
) -> Claim:
    scan_id, worker = d.scan_id, d.worker
    async with engine.begin() as conn:
        row = await _locked(conn, scan_id)
        if row is None:
            return Claim("gone")
        early = _claim_refused(row, d, stale_after)
        if early is not None:
            return early
        deliveries = row.deliveries + 1
        if deliveries > max_deliveries:
            await _mark_dead(conn, d, row, deliveries)
            return Claim("dead", deliveries=deliveries, status="dead")
        await conn.execute(
            _update(scan_id).values(
                status="running",
                worker=worker,
                deliveries=deliveries,
                heartbeat_at=func.now(),
                started_at=func.coalesce(SCANS.c.started_at, func.now()),
            )
        )
        return _claimed(row, deliveries)


def _claimed(row: Locked, deliveries: int) -> Claim:
    return Claim(
        "claimed",
        domain=row.domain,
        config=row.config,
        deliveries=deliveries,
        queued_for=row.queued_for,
        status="running",
    )


def _claim_refused(row: Locked, d: Delivery, stale_after: float) -> Claim | None:
    """The claim's answer when the row is not ours to take (or already ours); None to take it."""
    if row.attempt != d.attempt:
        return Claim("stale_attempt", status=row.status)
    if row.status not in LIVE_STATUSES:
        return Claim("finished", status=row.status)
    if row.status == "running" and row.worker == d.worker and row.hb_age is not None:
        # Our own claim, committed but its reply lost (a retried claim): keep it. Not
        # once released (heartbeat NULL): then a redelivery to us is a new delivery.
        return _claimed(row, row.deliveries)
    if row.status == "running" and row.hb_age is not None and row.hb_age < stale_after:
        # Another live worker has it (a duplicate message, or a redelivery racing a
        # worker that is still finishing): wait for its heartbeat to stop or the scan to end.
        return Claim("busy", status=row.status)
    return None


async def _mark_dead(conn: AsyncConnection, d: Delivery, row: Locked, deliveries: int) -> None:
    reason = (
        f"dead after {deliveries - 1} deliveries of attempt {d.attempt}: no delivery "
        f"finished it (its worker died or the task failed; last: {row.worker})"
    )
    await conn.execute(
        _update(d.scan_id).values(
            status="dead",
            error=reason,
            finished_at=func.now(),
            heartbeat_at=None,
            deliveries=deliveries,
        )
    )


def _progress(status: str | None, attempt: int, worker: str | None, d: Delivery) -> Progress:
    if status is None:
        return "gone"
    if status == "cancelled":
        return "cancelled"
    if status != "running" or (attempt, worker) != (d.attempt, d.worker):
        return "lost"
    return "ok"


def _progress_of(row: Locked | None, d: Delivery) -> Progress:
    if row is None:
        return "gone"
    return _progress(row.status, row.attempt, row.worker, d)


async def checkpoint(engine: AsyncEngine, d: Delivery, findings: list[Finding]) -> Progress:
    """Store findings (idempotently) and touch the heartbeat, if the scan is still ours."""
    async with engine.begin() as conn:
        progress = _progress_of(await _locked(conn, d.scan_id), d)
        if progress != "ok":
            return progress
        await conn.execute(_update(d.scan_id).values(heartbeat_at=func.now()))
        if findings:
            rows = [{"scan_id": d.scan_id, **_row(f)} for f in findings]
            await conn.execute(
                insert(FINDINGS)
                .values(rows)
                .on_conflict_do_nothing(index_elements=[FINDINGS.c.scan_id, FINDINGS.c.key])
            )
        return "ok"


def _row(f: Finding) -> dict[str, object]:
    return {
        "key": f.key,
        "kind": f.kind,
        "severity": f.severity,
        "title": f.title,
        "url": f.url,
        "detail": f.detail,
    }


def _ours(d: Delivery) -> ColumnElement[bool]:
    c = SCANS.c
    return and_(
        c.id == d.scan_id, c.attempt == d.attempt, c.worker == d.worker, c.status == "running"
    )


async def heartbeat(engine: AsyncEngine, d: Delivery) -> Progress:
    async with engine.begin() as conn:
        touched = await conn.execute(
            update(SCANS).where(_ours(d)).values(heartbeat_at=func.now()).returning(SCANS.c.id)
        )
        if touched.first() is not None:
            return "ok"
        c = SCANS.c
        row = (
            await conn.execute(select(c.status, c.attempt, c.worker).where(c.id == d.scan_id))
        ).first()
        if row is None:
            return "gone"
        return _progress(row.status, row.attempt, row.worker, d)


async def finish(
    engine: AsyncEngine,
    d: Delivery,
    *,
    status: Literal["succeeded", "failed"],
    error: str | None = None,
) -> Progress:
    """The one terminal transition a worker makes; a no-op unless the scan is still ours."""
    async with engine.begin() as conn:
        progress = _progress_of(await _locked(conn, d.scan_id), d)
        if progress != "ok":
            return progress
        await conn.execute(
            _update(d.scan_id).values(
                status=status, error=error, finished_at=func.now(), heartbeat_at=None
            )
        )
        return "ok"


async def holder(engine: AsyncEngine, scan_id: uuid.UUID) -> str | None:
    async with engine.connect() as conn:
        value = await conn.scalar(select(SCANS.c.worker).where(SCANS.c.id == scan_id))
        return None if value is None else str(value)


async def release_dead(engine: AsyncEngine, dead: Delivery) -> None:
    """Expire the heartbeat of a scan whose worker process is known to be gone (or whose task
    gave up on it), so the next claim takes it over at once as a new delivery, counted toward
    the cap."""
    async with engine.begin() as conn:
        await conn.execute(update(SCANS).where(_ours(dead)).values(heartbeat_at=None))
