"""Scan operations behind the routes (DESIGN "Scans: no race, no orphans").

Create and retry write the scan row and its outbox row in ONE transaction, then publish after
COMMIT and mark the outbox row sent; if the publish fails (broker down) or the process dies
first, the maintenance queue's relay sends the row. A worker therefore never receives a scan
whose row is not committed: no countdown, no "created" marker, no existence-check retry loop.

Visibility: `owner` is the X-User-Id the calling service acts for; `None` means an admin, who
sees every scan. A scan someone may not see is a 404, as if it did not exist.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Row,
    Select,
    and_,
    delete,
    func,
    literal,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from celery_stack_api.state import AppState
from celery_stack_core import metrics, outbox
from celery_stack_core.hooks import HOOKS
from celery_stack_core.models import LIVE_STATUSES, TERMINAL_STATUSES, Base
from celery_stack_core.scan_spec import SCAN_TASK, task_id

SCANS = Base.metadata.tables["scans"]
FINDINGS = Base.metadata.tables["findings"]
# What the API shows of a scan: every column but the client's idempotency key.
COLUMNS = [c for c in SCANS.c if c.name != "idempotency_key"]
FINDING_COLUMNS = [c for c in FINDINGS.c if c.name != "scan_id"]


class ScanNotFound(LookupError):
    pass


class ScanConflict(RuntimeError):
    """The request is valid but the scan's state does not allow it (409)."""


class BadCursor(ValueError):
    pass


def _scan(row: Any) -> dict[str, Any]:
    out = dict(row._mapping)
    out["id"] = str(out["id"])
    out["task_id"] = task_id(out["id"], out["attempt"])
    return out


def _visible(owner: str | None) -> list[ColumnElement[bool]]:
    """What `owner` may see: its own scans; an admin (None) sees all."""
    return [] if owner is None else [SCANS.c.owner == owner]


def _this_scan(scan_id: uuid.UUID, owner: str | None) -> ColumnElement[bool]:
    return and_(SCANS.c.id == scan_id, *_visible(owner))


async def _lookup(conn: AsyncConnection, scan_id: uuid.UUID, owner: str | None) -> Row[Any]:
    """The scan if `owner` may see it, else ScanNotFound (as if it did not exist)."""
    row = (await conn.execute(select(*COLUMNS).where(_this_scan(scan_id, owner)))).first()
    if row is None:
        raise ScanNotFound(f"scan {scan_id} not found")
    return row


async def _enqueue(conn: AsyncConnection, scan_id: str, attempt: int) -> outbox.OutboxMessage:
    return await outbox.add(
        conn, task_name=SCAN_TASK, task_id=task_id(scan_id, attempt), args=[scan_id, attempt]
    )


async def _dispatch(state: AppState, msg: outbox.OutboxMessage) -> None:
    # Test seam between the COMMIT and the publish (the chaos test kills the process here).
    await HOOKS.reach("api.scans", "committed", str(msg.args[0]))
    assert state.celery is not None, "the API's Celery producer is created in the lifespan"
    await outbox.publish_now(state.engine, outbox.celery_publisher(state.celery), msg)


async def create_scan(
    state: AppState,
    *,
    owner: str,
    domain: str,
    config: dict[str, Any],
    idempotency_key: str | None,
) -> tuple[dict[str, Any], bool]:
    """Returns (scan, created). A repeated Idempotency-Key returns the first scan unchanged."""
    scan_id = str(uuid.uuid4())
    stmt = (
        insert(SCANS)
        .values(
            id=scan_id, owner=owner, domain=domain, config=config, idempotency_key=idempotency_key
        )
        .on_conflict_do_nothing(index_elements=[SCANS.c.owner, SCANS.c.idempotency_key])
        .returning(*COLUMNS)
    )
    async with state.engine.begin() as conn:
        row = (await conn.execute(stmt)).first()
        if row is None:
            existing = (
                await conn.execute(
                    select(*COLUMNS).where(
                        SCANS.c.owner == owner, SCANS.c.idempotency_key == idempotency_key
                    )
                )
            ).one()
            if existing.domain != domain or dict(existing.config) != config:
                raise ScanConflict("Idempotency-Key was already used for a different request")
            return _scan(existing), False
        msg = await _enqueue(conn, scan_id, 1)
    metrics.SCANS_CREATED.inc()
    await _dispatch(state, msg)
    return _scan(row), True


async def get_scan(state: AppState, scan_id: uuid.UUID, owner: str | None) -> dict[str, Any]:
    async with state.engine.connect() as conn:
        return _scan(await _lookup(conn, scan_id, owner))


# A page position: the last row's created_at (microseconds since the epoch, UTC) and its id.
# Every string this pattern matches is a position the keyset order can start after, so the
# schema's constraint and the validation are the same (a base64 JSON cursor was schema-valid
# text yet refused when it did not decode). 16 digits reach the year 2286.
CURSOR_PATTERN = r"^(?:[0-9]{1,16}_[0-9a-f]{32})?$"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICRO = timedelta(microseconds=1)


def encode_cursor(created_at: datetime, scan_id: uuid.UUID) -> str:
    return f"{(created_at - _EPOCH) // _MICRO}_{scan_id.hex}"


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """What CURSOR_PATTERN admits (the route checks it); anything else is BadCursor."""
    if not re.fullmatch(CURSOR_PATTERN, cursor) or not cursor:
        raise BadCursor("invalid cursor")
    micros, sid = cursor.split("_")
    return _EPOCH + int(micros) * _MICRO, uuid.UUID(sid)


async def list_scans(
    state: AppState,
    owner: str | None,
    *,
    status: str | None,
    cursor: str | None,
    limit: int,
) -> dict[str, Any]:
    """Newest first, keyset-paginated on (created_at, id): stable under concurrent inserts.
    An empty cursor is the first page."""
    stmt: Select[Any] = select(*COLUMNS).where(*_visible(owner))
    if status is not None:
        stmt = stmt.where(SCANS.c.status == status)
    if cursor:
        created, sid = decode_cursor(cursor)
        after = tuple_(literal(created, SCANS.c.created_at.type), literal(sid, SCANS.c.id.type))
        stmt = stmt.where(tuple_(SCANS.c.created_at, SCANS.c.id) < after)
    stmt = stmt.order_by(SCANS.c.created_at.desc(), SCANS.c.id.desc()).limit(limit + 1)
    async with state.engine.connect() as conn:
        rows = (await conn.execute(stmt)).all()
    items = [_scan(r) for r in rows[:limit]]
    last = rows[limit - 1] if len(rows) > limit else None
    return {
        "items": items,
        "next_cursor": encode_cursor(last.created_at, last.id) if last is not None else None,
    }


async def list_findings(
    state: AppState, scan_id: uuid.UUID, owner: str | None, *, after: int, limit: int
) -> dict[str, Any]:
    stmt = (
        select(*FINDING_COLUMNS)
        .where(FINDINGS.c.scan_id == scan_id, FINDINGS.c.id > after)
        .order_by(FINDINGS.c.id)
        .limit(limit + 1)
    )
    async with state.engine.connect() as conn:
        await _lookup(conn, scan_id, owner)
        rows = (await conn.execute(stmt)).all()
    items = [dict(r._mapping) for r in rows[:limit]]
    return {
        "items": items,
        "next_cursor": str(items[-1]["id"]) if len(rows) > limit else None,
    }


async def cancel_scan(state: AppState, scan_id: uuid.UUID, owner: str | None) -> dict[str, Any]:
    """Queued or running -> cancelled, at once. A running worker sees it at its next
    checkpoint and stops; its own terminal write is refused (the row is no longer its)."""
    stmt = (
        update(SCANS)
        .where(_this_scan(scan_id, owner), SCANS.c.status.in_(LIVE_STATUSES))
        .values(
            status="cancelled",
            finished_at=func.now(),
            heartbeat_at=None,
            error="cancelled through the API",
        )
        .returning(*COLUMNS)
    )
    async with state.engine.begin() as conn:
        row = (await conn.execute(stmt)).first()
        if row is None:
            current = await _lookup(conn, scan_id, owner)
            raise ScanConflict(f"scan is already {current.status}")
    metrics.SCANS_FINISHED.labels("cancelled").inc()
    return _scan(row)


async def retry_scan(state: AppState, scan_id: uuid.UUID, owner: str | None) -> dict[str, Any]:
    """A finished scan (any terminal state, `dead` included) gets a new attempt through the
    outbox; the old attempt's findings are replaced by the new one's."""
    stmt = (
        update(SCANS)
        .where(_this_scan(scan_id, owner), SCANS.c.status.in_(TERMINAL_STATUSES))
        .values(
            status="queued",
            attempt=SCANS.c.attempt + 1,
            deliveries=0,
            error=None,
            worker=None,
            heartbeat_at=None,
            started_at=None,
            finished_at=None,
            queued_at=func.now(),
        )
        .returning(*COLUMNS)
    )
    async with state.engine.begin() as conn:
        row = (await conn.execute(stmt)).first()
        if row is None:
            current = await _lookup(conn, scan_id, owner)
            raise ScanConflict(f"only a finished scan can be retried; this one is {current.status}")
        await conn.execute(delete(FINDINGS).where(FINDINGS.c.scan_id == scan_id))
        msg = await _enqueue(conn, str(row.id), int(row.attempt))
    await _dispatch(state, msg)
    return _scan(row)


async def delete_scan(state: AppState, scan_id: uuid.UUID, owner: str | None) -> None:
    """Findings go with it (ON DELETE CASCADE). A message still queued for it becomes a clean
    no-op in the worker (field report 002)."""
    stmt = delete(SCANS).where(_this_scan(scan_id, owner)).returning(SCANS.c.id)
    async with state.engine.begin() as conn:
        if (await conn.execute(stmt)).first() is None:
            raise ScanNotFound(f"scan {scan_id} not found")
