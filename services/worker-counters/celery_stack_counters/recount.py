"""Coalesced recounts of likes/collects/shares/comments from the source-of-truth tables.

An action marks its target dirty; a drain takes a batch of dirty targets and recounts each
from the tables in one statement per target type. Never one task per click (field report 001).
A periodic reconciliation walks every row and corrects drift that escaped the dirty set.
"""

from __future__ import annotations

import time
from collections import defaultdict

import redis.asyncio as aioredis
from sqlalchemy import BigInteger, Update, and_, bindparam, func, select, tuple_, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from celery_stack_core import keys, metrics
from celery_stack_core.lua import lua
from celery_stack_core.models import Base, UserAction
from celery_stack_core.targets import ACTION_COLUMNS, TARGETS, Target, TargetType

ACTIONS = UserAction.__table__


def recount_statement(target: Target, ids: list[int]) -> Update:
    """One statement: recompute the counts of the given ids, write only those that differ.

    WITH ids AS (unnest of the ids), agg AS (ids LEFT JOIN user_actions, count per kind,
    plus the comments) UPDATE <table> SET ... FROM agg WHERE the row differs RETURNING id.
    """
    table = Base.metadata.tables[target.table]
    ids_cte = (
        select(func.unnest(bindparam("ids", ids, type_=ARRAY(BigInteger))).label("id"))
        .distinct()
        .cte("ids")
    )
    counts = [
        func.count(ACTIONS.c.id).filter(ACTIONS.c.kind == kind).label(ACTION_COLUMNS[kind])
        for kind in target.actions
    ]
    if target.comment_table and target.comment_fk:
        comments = Base.metadata.tables[target.comment_table]
        counts.append(
            select(func.count())
            .select_from(comments)
            .where(comments.c[target.comment_fk] == ids_cte.c.id)
            .scalar_subquery()
            .label("comments")
        )
    joined = ids_cte.outerjoin(
        ACTIONS, and_(ACTIONS.c.target_type == target.type, ACTIONS.c.target_id == ids_cte.c.id)
    )
    agg = select(ids_cte.c.id, *counts).select_from(joined).group_by(ids_cte.c.id).cte("agg")
    cols = target.recounted
    return (
        update(table)
        .values({c: agg.c[c] for c in cols})
        .where(
            table.c.id == agg.c.id,
            tuple_(*(table.c[c] for c in cols)).is_distinct_from(tuple_(*(agg.c[c] for c in cols))),
        )
        .returning(table.c.id)
    )


async def recount(conn: AsyncConnection, target: TargetType, ids: list[int]) -> int:
    """Recount `ids` of one target type; returns how many rows changed."""
    res = await conn.execute(recount_statement(TARGETS[target], ids))
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
                table = Base.metadata.tables[target.table]
                rows = await conn.execute(
                    select(table.c.id)
                    .where(table.c.id > after)
                    .order_by(table.c.id)
                    .limit(batch_size)
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
