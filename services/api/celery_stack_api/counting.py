"""Counter operations behind the routes: plain functions over the engine and Redis.

A store that cannot be reached surfaces here as `Unavailable` (503 + Retry-After), and only
then: a data error goes on as itself (celery_stack_core.outage says which is which).
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions
from sqlalchemy import Table, delete, exists, literal, select
from sqlalchemy.dialects.postgresql import insert

from celery_stack_api.state import AppState
from celery_stack_core import buffer, metrics
from celery_stack_core.hooks import HOOKS
from celery_stack_core.models import Base, CounterBatch, UserAction
from celery_stack_core.outage import is_outage
from celery_stack_core.targets import TARGETS, ActionKind, TargetType

log = logging.getLogger(__name__)
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError)
# A read that saw a flush claim a batch between its Redis and SQL reads reads again; a claim
# takes a few ms every COUNTER_FLUSH_INTERVAL seconds, so a second attempt practically always
# succeeds and this bound is only there so a read can never spin.
READ_ATTEMPTS = 5
_batches: Table = CounterBatch.__table__
_actions: Table = UserAction.__table__


class NotFound(LookupError):
    pass


class Unavailable(RuntimeError):
    """A store the request needs is unreachable: the client should retry later (503)."""


@contextlib.contextmanager
def unavailable_on_outage(what: str) -> Iterator[None]:
    """Turn a connection-class failure of `what` into Unavailable; anything else goes on."""
    try:
        yield
    except Unavailable:
        raise
    except Exception as exc:
        if not is_outage(exc):
            raise
        raise Unavailable(f"{what} is unreachable, retry later") from exc


def table_of(target: TargetType) -> Table:
    return Base.metadata.tables[TARGETS[target].table]


async def existing(state: AppState, target: TargetType, ids: list[int]) -> set[int]:
    """Which of `ids` exist, in one query."""
    table = table_of(target)
    async with state.engine.connect() as conn:
        rows = await conn.execute(select(table.c.id).where(table.c.id.in_(ids)))
        return {r[0] for r in rows}


async def _known(state: AppState, target: TargetType, ids: list[int]) -> set[int]:
    """The ids that may take a view: cached, or found in PostgreSQL (then cached). With
    PostgreSQL unreachable every id is accepted: a missing row is counted as dropped at flush
    (docs/loss-bounds.md), so views keep flowing while Redis is up."""
    known_ids = state.known_ids
    with known_ids.timer:  # one clock read for the whole list, not one per id
        unknown = [i for i in ids if (target, i) not in known_ids]
    if not unknown:
        return set(ids)
    try:
        found = await existing(state, target, unknown)
    except Exception as exc:
        if not is_outage(exc):
            raise
        metrics.VIEWS_UNCHECKED.labels(target).inc(len(unknown))
        log.warning(
            "postgresql unreachable: accepting views without the existence check",
            extra={"target": target, "ids": len(unknown), "error": repr(exc)},
        )
        return set(ids)
    for i in found:
        state.known_ids[(target, i)] = True
    return set(ids) - set(unknown) | found


async def record_view(
    state: AppState, target: TargetType, target_id: int, viewer: str | None
) -> str:
    """Buffer one view. Returns "buffered" or "direct" (the Redis-down fallback)."""
    if not await _known(state, target, [target_id]):
        raise NotFound(f"{target} {target_id} does not exist")
    try:
        await buffer.increment(
            state.redis,
            target,
            "views",
            target_id,
            shards=state.settings.counters.shards,
            viewer=viewer,
        )
        views_counted(target).inc()
        return "buffered"
    except REDIS_DOWN as exc:
        log.warning(
            "redis unreachable, writing the view to the database", extra={"error": repr(exc)}
        )
    with unavailable_on_outage("neither Redis nor PostgreSQL"):
        async with state.engine.begin() as conn:
            if not await buffer.increment_in_db(conn, target, "views", target_id):
                raise NotFound(f"{target} {target_id} does not exist")
    metrics.FALLBACKS.labels(target, "views").inc()
    return "direct"


@functools.cache
def views_counted(target: str) -> Any:
    """The `INCREMENTS` child of `target`'s views, looked up once (labels() costs µs per call)."""
    return metrics.INCREMENTS.labels(target, "views")


@dataclass(frozen=True)
class BatchOutcome:
    accepted: int  # increments buffered
    unknown: list[tuple[TargetType, int]]  # ids with no row: not buffered


def sum_views(items: Iterable[Mapping[str, Any]]) -> dict[TargetType, dict[int, int]]:
    """Validated batch items (`target`, `id`, `count`) summed per target and id: an id listed
    twice counts both."""
    out: dict[TargetType, dict[int, int]] = {}
    for item in items:
        target = item["target"]
        per_id = out.get(target)
        if per_id is None:
            per_id = out[target] = {}
        target_id = item["id"]
        per_id[target_id] = per_id.get(target_id, 0) + item["count"]
    return out


async def record_views_batch(
    state: AppState, items: Mapping[TargetType, dict[int, int]]
) -> BatchOutcome:
    """Buffer many (target, id) -> count views in one Redis round trip; ids with no row are
    left out and reported. Redis down: Unavailable (the caller retries the whole batch)."""
    accepted: dict[TargetType, dict[int, int]] = {}
    unknown: list[tuple[TargetType, int]] = []
    for target, counts in items.items():
        known = await _known(state, target, list(counts))
        if len(known) == len(counts):
            accepted[target] = counts
            continue
        accepted[target] = {i: n for i, n in counts.items() if i in known}
        unknown.extend((target, i) for i in sorted(set(counts) - known))
    with unavailable_on_outage("Redis"):
        await buffer.increment_many(
            state.redis, "views", accepted, shards=state.settings.counters.shards
        )
    total = 0
    for target, counts in accepted.items():
        n = sum(counts.values())
        views_counted(target).inc(n)
        total += n
    return BatchOutcome(total, unknown)


@dataclass
class _Snapshot:
    pending: dict[str, buffer.Buffered]
    uniques: int | None
    partial: bool


async def _read_buffers(state: AppState, target: TargetType, target_id: int) -> _Snapshot:
    spec = TARGETS[target]
    shards = state.settings.counters.shards
    snap = _Snapshot({}, None, partial=False)
    try:
        for field in spec.buffered:
            snap.pending[field] = await buffer.buffered(
                state.redis, target, field, target_id, shards=shards
            )
        if spec.buffered:
            snap.uniques = await buffer.unique_viewers(state.redis, target, target_id)
    except REDIS_DOWN:
        snap = _Snapshot({}, None, partial=True)
    return snap


async def _read_row(
    state: AppState, target: TargetType, target_id: int, pending: dict[str, buffer.Buffered]
) -> dict[str, Any]:
    """The counters' columns plus, per buffered field, whether its in-flight batch is in the
    ledger: one statement, so one snapshot."""
    spec = TARGETS[target]
    table = table_of(target)
    applied = [
        exists().where(_batches.c.batch_id == p.inflight_batch).label(f"applied_{field}")
        if p.inflight_batch
        else literal(False).label(f"applied_{field}")
        for field, p in pending.items()
    ]
    cols = [table.c[c] for c in (*spec.buffered, *spec.recounted)]
    with unavailable_on_outage("PostgreSQL"):
        async with state.engine.connect() as conn:
            res = await conn.execute(select(*cols, *applied).where(table.c.id == target_id))
            row = res.mappings().first()
    if row is None:
        raise NotFound(f"{target} {target_id} does not exist")
    return dict(row)


async def _unchanged(
    state: AppState, target: TargetType, target_id: int, snap: _Snapshot
) -> bool | None:
    """Whether no flush claimed a batch since `snap` (None: Redis is unreachable now)."""
    shards = state.settings.counters.shards
    try:
        for field, p in snap.pending.items():
            now = await buffer.generation(state.redis, target, field, target_id, shards=shards)
            if now != p.generation:
                return False
    except REDIS_DOWN:
        return None
    return True


async def read_counts(state: AppState, target: TargetType, target_id: int) -> dict[str, Any]:
    """DB value + what Redis still buffers (live + in-flight unless its batch is committed).

    Read in that order, a flush that claims and commits between the Redis read and the SQL read
    would count the same views twice (issue 14). So the shard's claim generation is read again
    after the SQL read: unchanged means no batch was claimed, hence none committed, in between,
    and the sum is exact; changed means read again.
    """
    for _ in range(READ_ATTEMPTS):
        snap = await _read_buffers(state, target, target_id)
        # Test seam between the Redis read and the SQL read (a test forces a flush there).
        await HOOKS.reach("api.counts", "buffers_read")
        row = await _read_row(state, target, target_id, snap.pending)
        same = await _unchanged(state, target, target_id, snap) if snap.pending else True
        if same is None:  # Redis went away mid-read: the database alone, flagged partial
            snap = _Snapshot({}, None, partial=True)
        if same is not False:
            return _combine(target, target_id, row, snap)
        metrics.COUNT_REREADS.labels(target).inc()
    raise Unavailable("counts changed during every read attempt, retry later")


def _combine(
    target: TargetType, target_id: int, row: Mapping[str, Any], snap: _Snapshot
) -> dict[str, Any]:
    spec = TARGETS[target]
    counts: dict[str, Any] = {c: int(row[c]) for c in (*spec.buffered, *spec.recounted)}
    for field, p in snap.pending.items():
        counts[field] += p.live + (0 if row[f"applied_{field}"] else p.inflight)
    out: dict[str, Any] = {"id": target_id, "type": target, "counts": counts}
    if snap.uniques is not None:
        out["unique_viewers"] = snap.uniques
    if snap.partial:
        out["partial"] = True  # Redis unreachable: buffered increments are not included
    return out


async def set_action(  # noqa: PLR0913 - the action's four parts as routed; the flag keyword-only
    state: AppState, target: TargetType, target_id: int, user: str, kind: ActionKind, *, on: bool
) -> bool:
    """Record (on) or remove (off) one user's action; idempotent. Returns whether it changed."""
    with unavailable_on_outage("PostgreSQL"):
        changed = await _write_action(state, _Action(target, target_id, user, kind), on=on)
    if changed:
        metrics.ACTIONS.labels(target, kind, "add" if on else "remove").inc()
        await mark_dirty(state.redis, target, target_id)
    return changed


@dataclass(frozen=True)
class _Action:
    target: TargetType
    target_id: int
    user: str
    kind: ActionKind


async def _write_action(state: AppState, action: _Action, *, on: bool) -> bool:
    target, target_id, user, kind = action.target, action.target_id, action.user, action.kind
    table = table_of(target)
    a = _actions.c
    found = exists().where(table.c.id == target_id)
    if on:
        stmt: Any = (
            insert(_actions)
            .from_select(
                ["user_id", "target_type", "target_id", "kind"],
                select(literal(user), literal(target), literal(target_id), literal(kind)).where(
                    found
                ),
            )
            .on_conflict_do_nothing()
            .returning(a.id)
        )
    else:
        stmt = (
            delete(_actions)
            .where(
                a.user_id == user, a.target_type == target, a.target_id == target_id, a.kind == kind
            )
            .returning(a.id)
        )
    async with state.engine.begin() as conn:
        changed = (await conn.execute(stmt)).first() is not None
        if not changed and (await conn.execute(select(found))).scalar() is not True:
            raise NotFound(f"{target} {target_id} does not exist")
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
