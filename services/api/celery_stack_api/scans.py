"""Scan operations behind the routes (DESIGN "Scans: no race, no orphans").

Create and retry write the scan row and its outbox row in ONE transaction, then publish after
COMMIT and mark the outbox row sent; if the publish fails (broker down) or the process dies
first, the maintenance queue's relay sends the row. A worker therefore never receives a scan
whose row is not committed: no countdown, no "created" marker, no existence-check retry loop.

Visibility: `owner` is the X-User-Id the calling service acts for; `None` means an admin, who
sees every scan. A scan someone may not see is a 404, as if it did not exist.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from celery_stack_api.state import AppState
from celery_stack_core import metrics, outbox
from celery_stack_core.models import TERMINAL_STATUSES
from celery_stack_core.scan_spec import SCAN_TASK, task_id

COLUMNS = (
    "id, owner, domain, config, status, attempt, deliveries, worker, error, created_at, "
    "queued_at, started_at, heartbeat_at, finished_at"
)


class ScanNotFound(LookupError):
    pass


class ScanConflict(RuntimeError):
    """The request is valid but the scan's state does not allow it (409)."""


class BadCursor(ValueError):
    pass


@dataclass(frozen=True)
class ScanHooks:
    """Test-only seams; production never sets them. `after_commit(scan_id)` runs between the
    COMMIT and the publish (the chaos test kills the process there)."""

    after_commit: Callable[[str], Awaitable[None]] | None = None


NO_HOOKS = ScanHooks()


def _scan(row: Any) -> dict[str, Any]:
    out = dict(row._mapping)
    out["id"] = str(out["id"])
    out["task_id"] = task_id(out["id"], out["attempt"])
    return out


async def _enqueue(conn: AsyncConnection, scan_id: str, attempt: int) -> outbox.OutboxMessage:
    return await outbox.add(
        conn, task_name=SCAN_TASK, task_id=task_id(scan_id, attempt), args=[scan_id, attempt]
    )


async def _dispatch(state: AppState, msg: outbox.OutboxMessage, hooks: ScanHooks) -> None:
    if hooks.after_commit is not None:
        await hooks.after_commit(str(msg.args[0]))
    assert state.celery is not None, "the API's Celery producer is created in the lifespan"
    await outbox.publish_now(state.engine, outbox.celery_publisher(state.celery), msg)


async def create_scan(
    state: AppState,
    *,
    owner: str,
    domain: str,
    config: dict[str, Any],
    idempotency_key: str | None,
    hooks: ScanHooks = NO_HOOKS,
) -> tuple[dict[str, Any], bool]:
    """Returns (scan, created). A repeated Idempotency-Key returns the first scan unchanged."""
    scan_id = str(uuid.uuid4())
    async with state.engine.begin() as conn:
        row = (
            await conn.execute(
                text(
                    "INSERT INTO scans (id, owner, domain, config, idempotency_key) "
                    "VALUES (:id, :o, :d, CAST(:c AS jsonb), :k) "
                    "ON CONFLICT (owner, idempotency_key) DO NOTHING "
                    f"RETURNING {COLUMNS}"
                ),
                {
                    "id": scan_id,
                    "o": owner,
                    "d": domain,
                    "c": json.dumps(config),
                    "k": idempotency_key,
                },
            )
        ).first()
        if row is None:
            existing = (
                await conn.execute(
                    text(f"SELECT {COLUMNS} FROM scans WHERE owner = :o AND idempotency_key = :k"),
                    {"o": owner, "k": idempotency_key},
                )
            ).one()
            if existing.domain != domain or dict(existing.config) != config:
                raise ScanConflict("Idempotency-Key was already used for a different request")
            return _scan(existing), False
        msg = await _enqueue(conn, scan_id, 1)
    metrics.SCANS_CREATED.inc()
    await _dispatch(state, msg, hooks)
    return _scan(row), True


def _visible(owner: str | None) -> tuple[str, dict[str, Any]]:
    return ("", {}) if owner is None else (" AND owner = :owner", {"owner": owner})


async def get_scan(state: AppState, scan_id: uuid.UUID, owner: str | None) -> dict[str, Any]:
    cond, params = _visible(owner)
    async with state.engine.connect() as conn:
        row = (
            await conn.execute(
                text(f"SELECT {COLUMNS} FROM scans WHERE id = :id{cond}"),
                {"id": scan_id, **params},
            )
        ).first()
    if row is None:
        raise ScanNotFound(f"scan {scan_id} not found")
    return _scan(row)


def encode_cursor(created_at: datetime, scan_id: str) -> str:
    raw = json.dumps([created_at.isoformat(), scan_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Only what encode_cursor makes: a crafted value is a 422, never a 500 from the driver."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created, sid = json.loads(raw)
        if not isinstance(created, str) or not isinstance(sid, str):
            raise TypeError("cursor fields must be strings")
        at = datetime.fromisoformat(created)
        # asyncpg overflows converting extreme years to UTC; real rows are never near them.
        if at.tzinfo is None or not 1900 <= at.year <= 9998:
            raise ValueError("cursor timestamp out of range")
        return at, uuid.UUID(sid)
    except (ValueError, TypeError) as exc:
        raise BadCursor("invalid cursor") from exc


async def list_scans(
    state: AppState,
    owner: str | None,
    *,
    status: str | None,
    cursor: str | None,
    limit: int,
) -> dict[str, Any]:
    """Newest first, keyset-paginated on (created_at, id): stable under concurrent inserts."""
    cond, params = _visible(owner)
    if status is not None:
        cond += " AND status = :status"
        params["status"] = status
    if cursor is not None:
        created, sid = decode_cursor(cursor)
        cond += " AND (created_at, id) < (:c_at, :c_id)"
        params.update(c_at=created, c_id=sid)
    async with state.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    f"SELECT {COLUMNS} FROM scans WHERE true{cond} "
                    "ORDER BY created_at DESC, id DESC LIMIT :n"
                ),
                {**params, "n": limit + 1},
            )
        ).all()
    items = [_scan(r) for r in rows[:limit]]
    more = len(rows) > limit
    last = rows[limit - 1] if more else None
    return {
        "items": items,
        "next_cursor": encode_cursor(last.created_at, str(last.id)) if last is not None else None,
    }


async def list_findings(
    state: AppState, scan_id: uuid.UUID, owner: str | None, *, after: int, limit: int
) -> dict[str, Any]:
    await get_scan(state, scan_id, owner)  # 404 unless visible
    async with state.engine.connect() as conn:
        rows = (
            await conn.execute(
                text(
                    "SELECT id, key, kind, severity, title, url, detail, created_at "
                    "FROM findings WHERE scan_id = :id AND id > :after ORDER BY id LIMIT :n"
                ),
                {"id": scan_id, "after": after, "n": limit + 1},
            )
        ).all()
    items = [dict(r._mapping) for r in rows[:limit]]
    return {
        "items": items,
        "next_cursor": str(items[-1]["id"]) if len(rows) > limit else None,
    }


async def cancel_scan(state: AppState, scan_id: uuid.UUID, owner: str | None) -> dict[str, Any]:
    """Queued or running -> cancelled, at once. A running worker sees it at its next
    checkpoint and stops; its own terminal write is refused (the row is no longer its)."""
    cond, params = _visible(owner)
    async with state.engine.begin() as conn:
        row = (
            await conn.execute(
                text(
                    "UPDATE scans SET status = 'cancelled', finished_at = now(), "
                    "heartbeat_at = NULL, error = 'cancelled through the API' "
                    f"WHERE id = :id AND status IN ('queued', 'running'){cond} "
                    f"RETURNING {COLUMNS}"
                ),
                {"id": scan_id, **params},
            )
        ).first()
    if row is None:
        current = await get_scan(state, scan_id, owner)
        raise ScanConflict(f"scan is already {current['status']}")
    metrics.SCANS_FINISHED.labels("cancelled").inc()
    return _scan(row)


async def retry_scan(
    state: AppState, scan_id: uuid.UUID, owner: str | None, hooks: ScanHooks = NO_HOOKS
) -> dict[str, Any]:
    """A finished scan (any terminal state, `dead` included) gets a new attempt through the
    outbox; the old attempt's findings are replaced by the new one's."""
    cond, params = _visible(owner)
    async with state.engine.begin() as conn:
        row = (
            await conn.execute(
                text(
                    "UPDATE scans SET status = 'queued', attempt = attempt + 1, deliveries = 0, "
                    "error = NULL, worker = NULL, heartbeat_at = NULL, started_at = NULL, "
                    "finished_at = NULL, queued_at = now() "
                    f"WHERE id = :id AND status = ANY(:terminal){cond} RETURNING {COLUMNS}"
                ),
                {"id": scan_id, "terminal": list(TERMINAL_STATUSES), **params},
            )
        ).first()
        if row is None:
            msg = None
        else:
            await conn.execute(text("DELETE FROM findings WHERE scan_id = :id"), {"id": scan_id})
            msg = await _enqueue(conn, str(row.id), int(row.attempt))
    if msg is None:
        current = await get_scan(state, scan_id, owner)
        raise ScanConflict(f"only a finished scan can be retried; this one is {current['status']}")
    await _dispatch(state, msg, hooks)
    return _scan(row)


async def delete_scan(state: AppState, scan_id: uuid.UUID, owner: str | None) -> None:
    """Findings go with it (ON DELETE CASCADE). A message still queued for it becomes a clean
    no-op in the worker (field report 002)."""
    cond, params = _visible(owner)
    async with state.engine.begin() as conn:
        row = (
            await conn.execute(
                text(f"DELETE FROM scans WHERE id = :id{cond} RETURNING id"),
                {"id": scan_id, **params},
            )
        ).first()
    if row is None:
        raise ScanNotFound(f"scan {scan_id} not found")
