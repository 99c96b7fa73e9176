"""Counter operations behind the routes: plain functions over the engine and Redis."""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from celery_stack_api.state import AppState
from celery_stack_core import buffer, metrics
from celery_stack_core.targets import TARGETS, ActionKind, TargetType

log = logging.getLogger(__name__)
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)


class NotFound(LookupError):
    pass


class Unavailable(RuntimeError):
    """Neither store can take the write: the client should retry later (503)."""


async def exists(state: AppState, target: TargetType, target_id: int) -> bool:
    async with state.engine.connect() as conn:
        row = await conn.execute(
            text(f"SELECT 1 FROM {TARGETS[target].table} WHERE id = :id"), {"id": target_id}
        )
        return row.first() is not None


async def record_view(
    state: AppState, target: TargetType, target_id: int, viewer: str | None
) -> str:
    """Buffer one view. Returns "buffered" or "direct" (the Redis-down fallback)."""
    key = (target, target_id)
    if key not in state.known_ids:
        try:
            if not await exists(state, target, target_id):
                raise NotFound(f"{target} {target_id} does not exist")
            state.known_ids[key] = True
        except SQLAlchemyError:
            pass  # the database is down: accept; a missing row is counted as dropped at flush
    try:
        await buffer.increment(
            state.redis,
            target,
            "views",
            target_id,
            shards=state.settings.counters.shards,
            viewer=viewer,
        )
        metrics.INCREMENTS.labels(target, "views").inc()
        return "buffered"
    except REDIS_DOWN as exc:
        log.warning(
            "redis unreachable, writing the view to the database", extra={"error": repr(exc)}
        )
    try:
        async with state.engine.begin() as conn:
            if not await buffer.increment_in_db(conn, target, "views", target_id):
                raise NotFound(f"{target} {target_id} does not exist")
    except SQLAlchemyError as exc:
        raise Unavailable("neither Redis nor PostgreSQL is reachable") from exc
    metrics.FALLBACKS.labels(target, "views").inc()
    return "direct"


async def read_counts(state: AppState, target: TargetType, target_id: int) -> dict[str, Any]:
    """DB value + what Redis still buffers (live + in-flight unless its batch is committed)."""
    spec = TARGETS[target]
    shards = state.settings.counters.shards
    pending: dict[str, buffer.Buffered] = {}
    uniques: int | None = None
    partial = False
    try:
        for field in spec.buffered:
            pending[field] = await buffer.buffered(
                state.redis, target, field, target_id, shards=shards
            )
        if spec.buffered:
            uniques = await buffer.unique_viewers(state.redis, target, target_id)
    except REDIS_DOWN:
        partial = True
    cols = [*spec.buffered, *spec.recounted]
    checks = [
        f"EXISTS (SELECT 1 FROM counter_batches WHERE batch_id = CAST(:b_{f} AS uuid))"
        f" AS applied_{f}"
        for f in pending
    ]
    params: dict[str, Any] = {"id": target_id}
    params.update({f"b_{f}": p.inflight_batch for f, p in pending.items()})
    async with state.engine.connect() as conn:
        row = (
            (
                await conn.execute(
                    text(f"SELECT {', '.join(cols + checks)} FROM {spec.table} WHERE id = :id"),
                    params,
                )
            )
            .mappings()
            .first()
        )
    if row is None:
        raise NotFound(f"{target} {target_id} does not exist")
    counts: dict[str, Any] = {c: int(row[c]) for c in cols}
    for field, p in pending.items():
        counts[field] += p.live + (0 if row[f"applied_{field}"] else p.inflight)
    out: dict[str, Any] = {"id": target_id, "type": target, "counts": counts}
    if uniques is not None:
        out["unique_viewers"] = uniques
    if partial:
        out["partial"] = True  # Redis unreachable: buffered increments are not included
    return out


async def set_action(
    state: AppState, target: TargetType, target_id: int, user: str, kind: ActionKind, *, on: bool
) -> bool:
    """Record (on) or remove (off) one user's action; idempotent. Returns whether it changed."""
    table = TARGETS[target].table
    params = {"u": user, "tt": target, "id": target_id, "k": kind}
    async with state.engine.begin() as conn:
        if on:
            res = await conn.execute(
                text(
                    "INSERT INTO user_actions (user_id, target_type, target_id, kind) "
                    f"SELECT :u, :tt, :id, :k WHERE EXISTS (SELECT 1 FROM {table} WHERE id = :id) "
                    "ON CONFLICT DO NOTHING RETURNING id"
                ),
                params,
            )
        else:
            res = await conn.execute(
                text(
                    "DELETE FROM user_actions WHERE user_id = :u AND target_type = :tt "
                    "AND target_id = :id AND kind = :k RETURNING id"
                ),
                params,
            )
        changed = res.first() is not None
        if not changed:
            found = await conn.execute(
                text(f"SELECT 1 FROM {table} WHERE id = :id"), {"id": target_id}
            )
            if found.first() is None:
                raise NotFound(f"{target} {target_id} does not exist")
    if changed:
        metrics.ACTIONS.labels(target, kind, "add" if on else "remove").inc()
        await mark_dirty(state.redis, target, target_id)
    return changed


async def mark_dirty(redis: aioredis.Redis, target: TargetType, target_id: int) -> None:
    """After COMMIT. If Redis is down the action still stands (it is the source of truth) and
    the periodic reconciliation corrects the count."""
    try:
        await buffer.mark_dirty(redis, target, target_id)
    except REDIS_DOWN as exc:
        metrics.DIRTY_MARK_FAILURES.labels(target).inc()
        log.warning(
            "could not mark target dirty; reconciliation will catch it",
            extra={"target": target, "id": target_id, "error": repr(exc)},
        )
