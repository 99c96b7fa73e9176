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

import json
import uuid
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from celery_stack_core.models import LIVE_STATUSES
from celery_stack_scans.checks import Finding

ClaimOutcome = Literal["claimed", "gone", "stale_attempt", "finished", "busy", "dead"]
Progress = Literal["ok", "gone", "cancelled", "lost"]


@dataclass(frozen=True)
class Claim:
    outcome: ClaimOutcome
    domain: str = ""
    config: dict[str, object] | None = None
    deliveries: int = 0
    queued_for: float = 0.0  # seconds from queued_at to this claim (dispatch latency)
    status: str = ""


async def _locked(conn: AsyncConnection, scan_id: uuid.UUID) -> object | None:
    res = await conn.execute(
        text(
            "SELECT status, attempt, deliveries, worker, domain, config, "
            "EXTRACT(EPOCH FROM now() - heartbeat_at) AS hb_age, "
            "EXTRACT(EPOCH FROM now() - queued_at) AS queued_for "
            "FROM scans WHERE id = :id FOR UPDATE"
        ),
        {"id": scan_id},
    )
    return res.first()


async def claim(
    engine: AsyncEngine,
    scan_id: uuid.UUID,
    attempt: int,
    worker: str,
    *,
    stale_after: float,
    max_deliveries: int,
) -> Claim:
    async with engine.begin() as conn:
        row = await _locked(conn, scan_id)
        if row is None:
            return Claim("gone")
        status = str(row.status)  # type: ignore[attr-defined]
        if int(row.attempt) != attempt:  # type: ignore[attr-defined]
            return Claim("stale_attempt", status=status)
        if status not in LIVE_STATUSES:
            return Claim("finished", status=status)
        if status == "running" and row.worker == worker and row.hb_age is not None:  # type: ignore[attr-defined]
            # Our own claim, committed but its reply lost (a retried claim): keep it. Not
            # once released (heartbeat NULL): then a redelivery to us is a new delivery.
            return Claim(
                "claimed",
                domain=str(row.domain),  # type: ignore[attr-defined]
                config=dict(row.config),  # type: ignore[attr-defined]
                deliveries=int(row.deliveries),  # type: ignore[attr-defined]
                queued_for=float(row.queued_for),  # type: ignore[attr-defined]
                status=status,
            )
        hb_age = row.hb_age  # type: ignore[attr-defined]
        if status == "running" and hb_age is not None and float(hb_age) < stale_after:
            # Another live worker has it (a duplicate message, or a redelivery racing a
            # worker that is still finishing): wait for its heartbeat to stop or the scan to end.
            return Claim("busy", status=status)
        deliveries = int(row.deliveries) + 1  # type: ignore[attr-defined]
        if deliveries > max_deliveries:
            reason = (
                f"dead after {deliveries - 1} deliveries of attempt {attempt}: no delivery "
                f"finished it (its worker died or the task failed; last: {row.worker})"  # type: ignore[attr-defined]
            )
            await conn.execute(
                text(
                    "UPDATE scans SET status = 'dead', error = :e, finished_at = now(), "
                    "heartbeat_at = NULL, deliveries = :d WHERE id = :id"
                ),
                {"id": scan_id, "e": reason, "d": deliveries},
            )
            return Claim("dead", deliveries=deliveries, status="dead")
        await conn.execute(
            text(
                "UPDATE scans SET status = 'running', worker = :w, deliveries = :d, "
                "heartbeat_at = now(), started_at = COALESCE(started_at, now()) WHERE id = :id"
            ),
            {"id": scan_id, "w": worker, "d": deliveries},
        )
        return Claim(
            "claimed",
            domain=str(row.domain),  # type: ignore[attr-defined]
            config=dict(row.config),  # type: ignore[attr-defined]
            deliveries=deliveries,
            queued_for=float(row.queued_for),  # type: ignore[attr-defined]
            status="running",
        )


def _progress(row: object | None, attempt: int, worker: str) -> Progress:
    if row is None:
        return "gone"
    status = str(row.status)  # type: ignore[attr-defined]
    if status == "cancelled":
        return "cancelled"
    if status != "running" or int(row.attempt) != attempt or row.worker != worker:  # type: ignore[attr-defined]
        return "lost"
    return "ok"


async def checkpoint(
    engine: AsyncEngine,
    scan_id: uuid.UUID,
    attempt: int,
    worker: str,
    findings: list[Finding],
) -> Progress:
    """Store findings (idempotently) and touch the heartbeat, if the scan is still ours."""
    async with engine.begin() as conn:
        progress = _progress(await _locked(conn, scan_id), attempt, worker)
        if progress != "ok":
            return progress
        await conn.execute(
            text("UPDATE scans SET heartbeat_at = now() WHERE id = :id"), {"id": scan_id}
        )
        if findings:
            await conn.execute(
                text(
                    "INSERT INTO findings (scan_id, key, kind, severity, title, url, detail) "
                    "SELECT :id, f.key, f.kind, f.severity, f.title, f.url, f.detail "
                    "FROM jsonb_to_recordset(CAST(:rows AS jsonb)) AS f(key text, kind text, "
                    "severity text, title text, url text, detail jsonb) "
                    "ON CONFLICT (scan_id, key) DO NOTHING"
                ),
                {"id": scan_id, "rows": json.dumps([_row(f) for f in findings])},
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


async def heartbeat(engine: AsyncEngine, scan_id: uuid.UUID, attempt: int, worker: str) -> Progress:
    async with engine.begin() as conn:
        res = await conn.execute(
            text(
                "UPDATE scans SET heartbeat_at = now() WHERE id = :id AND attempt = :a "
                "AND worker = :w AND status = 'running' RETURNING 1"
            ),
            {"id": scan_id, "a": attempt, "w": worker},
        )
        if res.first() is not None:
            return "ok"
        row = (
            await conn.execute(
                text("SELECT status, attempt, worker FROM scans WHERE id = :id"), {"id": scan_id}
            )
        ).first()
        return _progress(row, attempt, worker)


async def finish(
    engine: AsyncEngine,
    scan_id: uuid.UUID,
    attempt: int,
    worker: str,
    status: Literal["succeeded", "failed"],
    error: str | None = None,
) -> Progress:
    """The one terminal transition a worker makes; a no-op unless the scan is still ours."""
    async with engine.begin() as conn:
        progress = _progress(await _locked(conn, scan_id), attempt, worker)
        if progress != "ok":
            return progress
        await conn.execute(
            text(
                "UPDATE scans SET status = :s, error = :e, finished_at = now(), "
                "heartbeat_at = NULL WHERE id = :id"
            ),
            {"id": scan_id, "s": status, "e": error},
        )
        return "ok"


async def holder(engine: AsyncEngine, scan_id: uuid.UUID) -> str | None:
    async with engine.connect() as conn:
        res = await conn.execute(text("SELECT worker FROM scans WHERE id = :id"), {"id": scan_id})
        value = res.scalar()
        return None if value is None else str(value)


async def release_dead(
    engine: AsyncEngine, scan_id: uuid.UUID, attempt: int, dead_worker: str
) -> None:
    """Expire the heartbeat of a scan whose worker process is known to be gone (or whose task
    gave up on it), so the next claim takes it over at once as a new delivery, counted toward
    the cap."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE scans SET heartbeat_at = NULL WHERE id = :id AND attempt = :a "
                "AND worker = :w AND status = 'running'"
            ),
            {"id": scan_id, "a": attempt, "w": dead_worker},
        )
