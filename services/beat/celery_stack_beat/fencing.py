"""Fencing in Redis: the epoch, slot claims and last-run state (DESIGN "Beat").

Only the holder of the current epoch can claim a slot, and a slot is claimed once; the claim
also moves the entry's last-run marker, so a new leader resumes exactly where the old one
stopped. A slot claimed for sending stays in the pending set until it was handed to the
broker, so the current leader resends what a crashed, paused or fenced claimer did not send.
"""

from __future__ import annotations

import enum
import json

import redis.asyncio as aioredis

from celery_stack_core import keys
from celery_stack_core.lua import lua


class Claim(enum.IntEnum):
    STALE = -1  # our epoch was superseded: we are no longer the leader
    DUPLICATE = 0  # someone (or we) already claimed this slot or a newer one
    CLAIMED = 1


def task_id(entry: str, due_ms: int) -> str:
    """Task id from entry + nominal due time: a duplicate send is visible downstream."""
    return f"beat:{entry}:{due_ms}"


def parse_task_id(tid: str) -> tuple[str, int] | None:
    parts = tid.split(":")
    if len(parts) != 3 or parts[0] != "beat" or not parts[2].isdigit():
        return None
    return parts[1], int(parts[2])


async def current_epoch(redis: aioredis.Redis) -> int:
    return int(await redis.get(keys.BEAT_EPOCH) or 0)


async def raise_epoch(redis: aioredis.Redis, epoch: int) -> bool:
    """Make `epoch` current (Kubernetes election); False if a newer epoch exists."""
    script = redis.register_script(lua(__file__, "fence_raise"))
    return bool(await script(keys=[keys.BEAT_EPOCH], args=[epoch]))


async def claim(  # noqa: PLR0913 - keyword-only: one argument per field the claim records
    redis: aioredis.Redis,
    *,
    epoch: int,
    entry: str,
    due_ms: int,
    ttl_ms: int,
    holder: str,
    mode: str = "send",
) -> Claim:
    record = json.dumps({"epoch": epoch, "holder": holder, "mode": mode}, separators=(",", ":"))
    script = redis.register_script(lua(__file__, "claim_slot"))
    got = await script(
        keys=[keys.BEAT_EPOCH, keys.beat_slot(entry, due_ms), keys.BEAT_LAST, keys.BEAT_PENDING],
        args=[epoch, entry, due_ms, ttl_ms, record, mode, task_id(entry, due_ms)],
    )
    return Claim(int(got))


async def pending_due(
    redis: aioredis.Redis, *, epoch: int, grace_ms: int, window_ms: int
) -> tuple[list[str], list[str]] | None:
    """Claimed slots not yet sent: (task ids given up, task ids to resend), or None if `epoch`
    is no longer current (a superseded leader resends nothing)."""
    script = redis.register_script(lua(__file__, "pending_due"))
    got = await script(keys=[keys.BEAT_EPOCH, keys.BEAT_PENDING], args=[epoch, grace_ms, window_ms])
    if int(got[0]) != 1:
        return None
    return [str(x) for x in got[1]], [str(x) for x in got[2]]


async def sent(redis: aioredis.Redis, entry: str, due_ms: int) -> None:
    """The slot was handed to the broker: nobody resends it."""
    await redis.zrem(keys.BEAT_PENDING, task_id(entry, due_ms))


async def last_runs(redis: aioredis.Redis) -> dict[str, int]:
    raw = await redis.hgetall(keys.BEAT_LAST)
    return {str(k): int(v) for k, v in raw.items()}
