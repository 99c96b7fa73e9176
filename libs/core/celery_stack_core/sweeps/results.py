"""Orphaned task results: `celery-task-meta-*` keys whose row is gone (field report 002), and
result keys without a TTL (they get CELERY_RESULT_EXPIRES).

SCAN in steps of JANITOR_SCAN_COUNT (scan_results.lua: the step and the TTLs in one call, packed
replies) and one indexed query per table per step; never KEYS, never a query per key. A key is
deleted only when its id names a row (taskids.py) and that row does not exist: rows are never
re-created with an old id (uuid4), so a result found orphaned stays orphaned. Real runs UNLINK /
EXPIRE ... NX (apply_results.lua), which are no-ops on a key that vanished or got a TTL since it
was read.
"""

from __future__ import annotations

from celery_stack_core.lua import lua
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


async def _step(ctx: SweepContext, cursor: int) -> tuple[int, list[str], set[str], int]:
    script = ctx.redis.register_script(lua(__file__, "scan_results"))
    nxt, packed, packed_nottl, skipped = await script(
        args=[cursor, f"{RESULT_PREFIX}*", ctx.settings.janitor.scan_count]
    )
    names = packed.split("\n") if packed else []
    return int(nxt), names, set(packed_nottl.split("\n")) if packed_nottl else set(), int(skipped)


async def _plan(ctx: SweepContext, names: list[str], no_ttl: set[str]) -> list[Action]:
    refs = {name: parse_task_id(name[len(RESULT_PREFIX) :]) for name in names}
    alive = await existing(ctx.engine, refs.values())
    ttl = ctx.settings.celery.result_expires
    plan: list[Action] = []
    for name in names:
        ref = refs[name]
        if ref.row_id is not None and ref.row_id not in alive:
            plan.append(Action("delete", name, (("row", ref.kind),)))
        elif name in no_ttl:
            plan.append(Action("expire", name, (("ttl", ttl),)))
    return plan


async def _execute(ctx: SweepContext, rec: Recorder, plan: list[Action]) -> None:
    if rec.dry_run:
        for action in plan:
            rec.done(action)
        return
    script = ctx.redis.register_script(lua(__file__, "apply_results"))
    ops = "".join("d" if a.action == "delete" else "e" for a in plan)
    flags = await script(
        keys=[a.target for a in plan], args=[ops, ctx.settings.celery.result_expires]
    )
    for action, ok in zip(plan, flags, strict=True):
        if ok == "1":
            rec.done(action)
        else:
            rec.skip("changed", action.target)


async def sweep(ctx: SweepContext, *, dry_run: bool) -> SweepReport:
    rec = Recorder(ctx, NAME, dry_run=dry_run)
    cursor = await load_cursor(ctx, NAME)
    budget = ctx.settings.janitor.max_keys
    while True:
        cursor, keys, no_ttl, unreadable = await _step(ctx, cursor)
        rec.examined(len(keys) + unreadable)
        if unreadable:
            rec.skip("unreadable_name", n=unreadable)
        if keys:
            plan = await _plan(ctx, keys, no_ttl)
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
