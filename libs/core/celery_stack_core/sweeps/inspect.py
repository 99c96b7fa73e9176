"""Read-only views for `celery-stack-janitor status|tasks` and GET /api/v1/maintenance/...:
what report 002's cache manager showed, computed with SCAN and bounded work."""

from __future__ import annotations

import json
import time
from collections import Counter
from typing import Any, Literal, get_args

from sqlalchemy import func, select

from celery_stack_core import outbox as core_outbox
from celery_stack_core.config import QUEUES
from celery_stack_core.models import Scan
from celery_stack_core.sweeps import counters, locks, scans
from celery_stack_core.sweeps.base import SweepContext
from celery_stack_core.sweeps.rows import existing
from celery_stack_core.sweeps.taskids import RESULT_PREFIX, parse_task_id

# kombu's Redis transport: priority lists are "<queue>\x06\x16<priority>"; delivered but unacked
# messages sit in the "unacked" hash until acked or restored.
PRIORITY_SEP = "\x06\x16"
PRIORITY_STEPS = (3, 6, 9)


async def queue_depths(ctx: SweepContext) -> dict[str, Any]:
    pipe = ctx.redis.pipeline(transaction=False)
    for q in QUEUES:
        pipe.llen(q)
        for p in PRIORITY_STEPS:
            pipe.llen(f"{q}{PRIORITY_SEP}{p}")
    pipe.hlen("unacked")
    replies = await pipe.execute()
    out: dict[str, Any] = {}
    step = 1 + len(PRIORITY_STEPS)
    for i, q in enumerate(QUEUES):
        part = replies[i * step : (i + 1) * step]
        out[q] = {
            "ready": int(sum(part)),
            "by_priority": {
                "0": part[0],
                **{str(p): n for p, n in zip(PRIORITY_STEPS, part[1:], strict=True)},
            },
        }
    out["unacked"] = int(replies[-1])
    return out


# A result key's state: Celery's states, plus ours for a key with no or an unreadable status.
TaskState = Literal[
    "PENDING",
    "RECEIVED",
    "STARTED",
    "SUCCESS",
    "FAILURE",
    "RETRY",
    "REVOKED",
    "UNKNOWN",
    "UNREADABLE",
]
TASK_STATES: tuple[str, ...] = get_args(TaskState)


def _state(raw: str | None) -> str:
    try:
        return str(json.loads(raw or "{}").get("status", "UNKNOWN"))
    except ValueError:
        return "UNREADABLE"


async def list_tasks(
    ctx: SweepContext, *, orphaned: bool | None, state: str | None, cursor: int, limit: int
) -> tuple[list[dict[str, Any]], int]:
    """Result keys from `cursor` on (SCAN), filtered; returns (items, next cursor, 0 at the end).
    Stops after `limit` items or JANITOR_MAX_KEYS keys examined."""
    items: list[dict[str, Any]] = []
    examined = 0
    while True:
        cursor, names = await ctx.redis.scan(
            cursor, match=f"{RESULT_PREFIX}*", count=ctx.settings.janitor.scan_count
        )
        examined += len(names)
        items += await _describe(ctx, names, orphaned=orphaned, state=state)
        if cursor == 0 or len(items) >= limit or examined >= ctx.settings.janitor.max_keys:
            return items[:limit], cursor


async def _describe(
    ctx: SweepContext, names: list[str], *, orphaned: bool | None, state: str | None
) -> list[dict[str, Any]]:
    if not names:
        return []
    pipe = ctx.redis.pipeline(transaction=False)
    for n in names:
        pipe.get(n)
        pipe.ttl(n)
    replies = await pipe.execute()
    refs = [parse_task_id(n[len(RESULT_PREFIX) :]) for n in names]
    alive = await existing(ctx.engine, refs)
    out = []
    for i, n in enumerate(names):
        ref, st = refs[i], _state(replies[2 * i])
        is_orphan = ref.row_id is not None and ref.row_id not in alive
        if (orphaned is not None and is_orphan != orphaned) or (state and st != state):
            continue
        out.append(
            {
                "task_id": n[len(RESULT_PREFIX) :],
                "state": st,
                "ttl": replies[2 * i + 1],
                "row": ref.kind,
                "orphaned": is_orphan,
            }
        )
    return out


async def result_summary(ctx: SweepContext) -> dict[str, Any]:
    by_state: Counter[str] = Counter()
    no_ttl = orphans = total = 0
    cursor = 0
    while True:
        cursor, names = await ctx.redis.scan(
            cursor, match=f"{RESULT_PREFIX}*", count=ctx.settings.janitor.scan_count
        )
        for item in await _describe(ctx, names, orphaned=None, state=None):
            total += 1
            by_state[item["state"]] += 1
            no_ttl += item["ttl"] == -1
            orphans += item["orphaned"]
        if cursor == 0 or total >= ctx.settings.janitor.max_keys or ctx.out_of_time():
            break
    return {
        "total": total,
        "by_state": dict(by_state),
        "without_ttl": no_ttl,
        "orphaned": orphans,
        "complete": cursor == 0,
    }


async def status(ctx: SweepContext) -> dict[str, Any]:
    info = await ctx.redis.info()
    lock_report = await locks.sweep(ctx, dry_run=True)
    stuck = await scans.sweep(ctx, dry_run=True)
    batches = await counters.current_batches(ctx)
    now_ms = time.time() * 1000
    ages = {}
    for key in batches:
        since = await ctx.redis.get(key.replace(":batch", ":inflight_since"))
        ages[counters.shard_name(key)] = round((now_ms - int(since)) / 1000, 1) if since else None
    backlog, oldest = await core_outbox.backlog(ctx.engine)
    async with ctx.engine.connect() as conn:
        running = (
            await conn.execute(select(func.count()).where(Scan.__table__.c.status == "running"))
        ).scalar_one()
    return {
        "redis": {
            "used_memory": info.get("used_memory"),
            "used_memory_human": info.get("used_memory_human"),
            "connected_clients": info.get("connected_clients"),
        },
        "queues": await queue_depths(ctx),
        "results": await result_summary(ctx),
        "locks": {
            "held": lock_report.examined,
            "leaked": lock_report.by_action.get("release", 0),
            "kept": dict(lock_report.skipped),
        },
        "scans": {"running": running, "stuck": stuck.found},
        "outbox": {"unsent": backlog, "oldest_unsent_age_seconds": round(oldest, 1)},
        "inflight_batches": {"count": len(batches), "age_seconds": ages},
    }
