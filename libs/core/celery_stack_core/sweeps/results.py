"""Orphaned task results: `celery-task-meta-*` keys whose row is gone (field report 002), and
result keys without a TTL (they get CELERY_RESULT_EXPIRES).

    reader:  SCAN step (scan_results.lua) -> SCAN step -> ...        (up to READ_AHEAD ahead)
    checker: BATCH steps -> one findall -> one anti-join per table -> plan
    applier: plan -> apply_results.lua calls of <= JANITOR_SCAN_COUNT keys, each logged
    (the reader reads batch n+1 while batch n is checked in PostgreSQL and n-1 applied)

Each step is one scan_results.lua call: a SCAN of JANITOR_SCAN_COUNT and each key's expiry, in
one packed reply, so no Redis command of the sweep does more than that many keys' work (under
a millisecond at the default). Never KEYS, never a query per key, no Python object per key.
A key is deleted only when its id names a row (taskids.py) and that row does not exist: rows
are never re-created with an old id (uuid4), so a result found orphaned stays orphaned. Real runs
UNLINK / EXPIRE ... NX through apply_results.lua, compare-before-delete: a key whose expiry
changed since the SCAN step read it (re-written) or that vanished is left alone (`changed`).
A dry run plans with the same code and carries out nothing. Both stop at the key budget
(JANITOR_MAX_KEYS) or the deadline; the saved cursor is that of the last step applied.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from celery_stack_core.lua import lua
from celery_stack_core.sweeps.base import (
    Recorder,
    SweepContext,
    SweepReport,
    load_cursor,
    save_cursor,
)
from celery_stack_core.sweeps.rows import missing
from celery_stack_core.sweeps.taskids import PACKED_ROW_RESULTS, RESULT_PREFIX

NAME = "orphaned-results"
# SCAN steps checked together (one query per table, Lua apply calls of <= JANITOR_SCAN_COUNT
# keys): fewer round trips, which on a busy machine cost more than the work they carry.
BATCH = 8
READ_AHEAD = 2 * BATCH  # steps read but not yet checked: the reader reads a batch ahead


@dataclass(frozen=True)
class Step:
    """One SCAN step as scan_results.lua packed it."""

    cursor: int  # the cursor after this step (0: the scan is complete)
    packed: str  # "key expiry" lines
    no_ttl: str  # keys without a TTL, one a line
    examined: int
    unreadable: int  # names with a newline: never returned, never acted on


async def _read(ctx: SweepContext, cursor: int) -> Step:
    script = ctx.redis.register_script(lua(__file__, "scan_results"))
    nxt, packed, no_ttl, skipped, scanned = await script(
        args=[cursor, f"{RESULT_PREFIX}*", ctx.settings.janitor.scan_count]
    )
    return Step(int(nxt), packed, no_ttl, int(scanned), int(skipped))


@dataclass
class Plan:
    delete: list[str]  # keys of results whose row is gone
    expiry: list[str]  # the expiry scan_results.lua read for each of them (compare-before-delete)
    kinds: list[str]  # the row kind each was about (scan | job)
    expire: list[str]  # keys without a TTL (and not deleted)


async def _plan(conn: AsyncConnection, steps: list[Step]) -> Plan:
    packed = "\n".join(s.packed for s in steps)
    rows = PACKED_ROW_RESULTS.findall(packed)  # (key, scan id, job id, expiry)
    gone = {
        kind: await missing(conn, kind, ids)
        for kind, ids in (
            ("scan", [s for _, s, _, _ in rows if s]),
            ("job", [j for _, _, j, _ in rows if j]),
        )
    }
    plan = Plan([], [], [], [])
    for name, scan, job, expiry in rows:
        if (scan and scan in gone["scan"]) or (job and job in gone["job"]):
            plan.delete.append(name)
            plan.expiry.append(expiry)
            plan.kinds.append("scan" if scan else "job")
    deleted = set(plan.delete)
    no_ttl = "\n".join(s.no_ttl for s in steps).split("\n")
    plan.expire = [k for k in no_ttl if k and k not in deleted]
    return plan


def _record_found(ctx: SweepContext, rec: Recorder, plan: Plan) -> None:
    for kind in ("scan", "job"):
        rec.found_all(
            "delete",
            [k for k, t in zip(plan.delete, plan.kinds, strict=True) if t == kind],
            (("row", kind),),
        )
    rec.found_all("expire", plan.expire, (("ttl", ctx.settings.celery.result_expires),))


async def _execute(ctx: SweepContext, rec: Recorder, plan: Plan) -> None:
    """Apply (real run) in Lua calls of at most JANITOR_SCAN_COUNT keys, each logged as soon as
    Redis answered: one line per action kind naming every key it was done to."""
    ttl = ctx.settings.celery.result_expires
    keys = plan.delete + plan.expire
    tags = [("delete", kind) for kind in plan.kinds] + [("expire", "")] * len(plan.expire)
    ops = "d" * len(plan.delete) + "e" * len(plan.expire)
    expiry = plan.expiry + ["-"] * len(plan.expire)
    script = ctx.redis.register_script(lua(__file__, "apply_results"))
    chunk = max(1, len(keys)) if rec.dry_run else ctx.settings.janitor.scan_count
    for lo in range(0, len(keys), chunk):
        hi = min(lo + chunk, len(keys))
        if rec.dry_run:
            flags = "1" * (hi - lo)  # what the real run does on unchanged state
        else:
            flags = await script(keys=keys[lo:hi], args=[ops[lo:hi], ttl, *expiry[lo:hi]])
        done: dict[tuple[str, str], list[str]] = {}
        for key, tag, ok in zip(keys[lo:hi], tags[lo:hi], flags, strict=True):
            if ok == "1":
                done.setdefault(tag, []).append(key)
            else:
                rec.skip("changed", key)
        for (action, kind), targets in done.items():
            detail = (("row", kind),) if action == "delete" else (("ttl", ttl),)
            rec.done_all(action, targets, detail)


async def _reader(
    ctx: SweepContext,
    cursor: int,
    steps: asyncio.Queue[Step | None],
    ahead: asyncio.Semaphore,
) -> None:
    examined, budget = 0, ctx.settings.janitor.max_keys
    try:
        while True:
            await ahead.acquire()  # released once the step is checked
            step = await _read(ctx, cursor)
            steps.put_nowait(step)
            cursor, examined = step.cursor, examined + step.examined
            if cursor == 0 or examined >= budget or ctx.out_of_time():
                return
    finally:
        steps.put_nowait(None)  # the checker stops; a failure is raised by awaiting this task


async def _batch(steps: asyncio.Queue[Step | None]) -> tuple[list[Step], bool]:
    """The next BATCH steps (fewer once the reader is done); True once it is done."""
    batch: list[Step] = []
    while len(batch) < BATCH:
        step = await steps.get()
        if step is None:
            return batch, True
        batch.append(step)
    return batch, False


async def sweep(ctx: SweepContext, *, dry_run: bool) -> SweepReport:
    """Three stages, each awaiting a different server: the reader runs SCAN steps ahead (at most
    READ_AHEAD), the checker takes BATCH steps into one query per table, and the plan it makes
    is applied in Redis while it checks the next batch."""
    rec = Recorder(ctx, NAME, dry_run=dry_run)
    cursor = await load_cursor(ctx, NAME)
    steps: asyncio.Queue[Step | None] = asyncio.Queue()
    ahead = asyncio.Semaphore(READ_AHEAD)
    applying: asyncio.Task[None] | None = None
    async with ctx.engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")  # no transaction held open
        reader = asyncio.create_task(_reader(ctx, cursor, steps, ahead))
        try:
            done = False
            while not done:
                batch, done = await _batch(steps)
                if not batch:
                    break
                for step in batch:
                    rec.examined(step.examined)
                    if step.unreadable:
                        rec.skip("unreadable_name", n=step.unreadable)
                plan = await _plan(conn, batch)
                _record_found(ctx, rec, plan)
                if applying is not None:
                    await applying  # one batch applied at a time, in order
                applying = asyncio.create_task(_execute(ctx, rec, plan))
                cursor = batch[-1].cursor  # saved only once its batch is applied (below)
                for _ in batch:
                    ahead.release()
            if applying is not None:
                await applying
        finally:
            for task in (reader, applying):
                if task is not None:
                    task.cancel()  # a no-op on a finished task; stops it when another failed
                    await asyncio.wait([task])
        await reader  # raises what made the reader stop early, if anything did
    rec.report.complete = cursor == 0
    await save_cursor(ctx, NAME, cursor, dry_run=dry_run)
    return rec.finish()
