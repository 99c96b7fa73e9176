"""Coalesced recounts of likes/collects/shares/comments from the source-of-truth tables.

An action marks its target dirty; a drain takes a batch of dirty targets and recounts each
from the tables in one statement per target type. Never one task per click (field report 001).
A periodic reconciliation walks every row and corrects drift that escaped the dirty set.
"""

from __future__ import annotations

import time
from collections import defaultdict

import redis.asyncio as aioredis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from celery_stack_core import keys, metrics
from celery_stack_core.lua import lua
from celery_stack_core.targets import ACTION_COLUMNS, TARGETS, Target, TargetType


def recount_sql(target: Target) -> str:
    """One statement: recompute the counts of the given ids, write only those that differ."""
    aggs = [
        f"count(a.id) FILTER (WHERE a.kind = '{kind}') AS {ACTION_COLUMNS[kind]}"
        for kind in target.actions
    ]
    if target.comment_table:
        aggs.append(
            f"(SELECT count(*) FROM {target.comment_table} c "
            f"WHERE c.{target.comment_fk} = ids.id) AS comments"
        )
    cols = target.recounted
    sets = ", ".join(f"{c} = agg.{c}" for c in cols)
    old = ", ".join(f"t.{c}" for c in cols)
    new = ", ".join(f"agg.{c}" for c in cols)
    return (
        "WITH ids AS (SELECT DISTINCT unnest(CAST(:ids AS bigint[])) AS id), "
        f"agg AS (SELECT ids.id, {', '.join(aggs)} FROM ids "
        "LEFT JOIN user_actions a ON a.target_type = :tt AND a.target_id = ids.id "
        "GROUP BY ids.id) "
        f"UPDATE {target.table} AS t SET {sets} FROM agg "
        f"WHERE t.id = agg.id AND ROW({old}) IS DISTINCT FROM ROW({new}) RETURNING t.id"
    )


async def recount(conn: AsyncConnection, target: TargetType, ids: list[int]) -> int:
    """Recount `ids` of one target type; returns how many rows changed."""
    res = await conn.execute(text(recount_sql(TARGETS[target])), {"ids": ids, "tt": target})
    return len(res.fetchall())


def _parse(members: list[str]) -> dict[TargetType, list[int]]:
    by_type: dict[TargetType, list[int]] = defaultdict(list)
    for m in members:
        kind, _, raw = m.partition(":")
        if kind in TARGETS and raw.isdigit():
            by_type[kind].append(int(raw))
    return by_type


async def drain_dirty(
    redis: aioredis.Redis, engine: AsyncEngine, *, batch_size: int, claim_timeout: float
) -> int:
    """Recount one batch of dirty targets. Returns how many targets were recounted."""
    now_ms = int(time.time() * 1000)
    script = redis.register_script(lua(__file__, "dirty_claim"))
    members: list[str] = await script(
        keys=[keys.DIRTY, keys.DIRTY_CLAIMED],
        args=[batch_size, now_ms, now_ms - int(claim_timeout * 1000)],
    )
    if not members:
        return 0
    by_type = _parse(members)
    async with engine.begin() as conn:
        for target, ids in by_type.items():
            await recount(conn, target, ids)
            metrics.RECOUNTS.labels(target).inc(len(ids))
    # Only after COMMIT: a crash before this leaves the claims to be retried (dirty_claim.lua).
    await redis.zrem(keys.DIRTY_CLAIMED, *members)
    return sum(len(v) for v in by_type.values())


async def reconcile(engine: AsyncEngine, *, batch_size: int) -> dict[str, int]:
    """Recount every row of every target type, batch by batch; returns drift found per type."""
    drift: dict[str, int] = {}
    for target in TARGETS.values():
        after, fixed = 0, 0
        while True:
            async with engine.begin() as conn:
                rows = await conn.execute(
                    text(f"SELECT id FROM {target.table} WHERE id > :a ORDER BY id LIMIT :n"),
                    {"a": after, "n": batch_size},
                )
                ids = [r[0] for r in rows]
                if not ids:
                    break
                fixed += await recount(conn, target.type, ids)
            after = ids[-1]
        if fixed:
            metrics.DRIFT.labels(target.type, "reconcile").inc(fixed)
        drift[target.type] = fixed
    return drift
