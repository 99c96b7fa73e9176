"""Orphaned task results: `celery-task-meta-*` keys whose row is gone (field report 002), and
result keys without a TTL (they get CELERY_RESULT_EXPIRES).

SCAN in steps of JANITOR_SCAN_COUNT, one pipelined TTL per key and one indexed query per table
per step; never KEYS, never a query per key. A key is deleted only when its id names a row
(taskids.py) and that row does not exist: rows are never re-created with an old id (uuid4), so
a result found orphaned stays orphaned. Real runs UNLINK / EXPIRE ... NX, which are no-ops on
a key that vanished or got a TTL since it was read.
"""

from __future__ import annotations

from celery_stack_core.sweeps.base import (
    Action,
    Recorder,
    SweepContext,
    SweepReport,
    load_cursor,
    save_cursor,
)
from celery_stack_core.sweeps.rows import existing
from celery_stack_core.sweeps.taskids import RESULT_PREFIX, parse_task_id

NAME = "orphaned-results"


async def _plan(ctx: SweepContext, keys: list[str]) -> list[Action]:
    pipe = ctx.redis.pipeline(transaction=False)
    for key in keys:
        pipe.ttl(key)
    ttls = await pipe.execute()
    refs = {key: parse_task_id(key[len(RESULT_PREFIX) :]) for key in keys}
    alive = await existing(ctx.engine, refs.values())
    plan: list[Action] = []
    for key, ttl in zip(keys, ttls, strict=True):
        ref = refs[key]
        if ref.row_id is not None and ref.row_id not in alive:
            plan.append(Action("delete", key, (("row", ref.kind),)))
        elif ttl == -1:
            plan.append(Action("expire", key, (("ttl", ctx.settings.celery.result_expires),)))
    return plan


async def _execute(ctx: SweepContext, rec: Recorder, plan: list[Action]) -> None:
    if rec.dry_run:
        for action in plan:
            rec.done(action)
        return
    pipe = ctx.redis.pipeline(transaction=False)
    for action in plan:
        if action.action == "delete":
            pipe.unlink(action.target)
        else:
            pipe.expire(action.target, ctx.settings.celery.result_expires, nx=True)
    for action, ok in zip(plan, await pipe.execute(), strict=True):
        if ok:
            rec.done(action)
        else:
            rec.skip("changed", action.target)


async def sweep(ctx: SweepContext, *, dry_run: bool) -> SweepReport:
    rec = Recorder(ctx, NAME, dry_run=dry_run)
    cursor = await load_cursor(ctx, NAME)
    budget = ctx.settings.janitor.max_keys
    while True:
        cursor, keys = await ctx.redis.scan(
            cursor, match=f"{RESULT_PREFIX}*", count=ctx.settings.janitor.scan_count
        )
        rec.examined(len(keys))
        if keys:
            plan = await _plan(ctx, keys)
            for action in plan:
                rec.found(action)
            await _execute(ctx, rec, plan)
        if cursor == 0:
            break
        if rec.report.examined >= budget or ctx.out_of_time():
            rec.report.complete = False
            break
    await save_cursor(ctx, NAME, cursor, dry_run=dry_run)
    return rec.finish()
