"""Fencing in Redis: the epoch, slot claims and last-run state (DESIGN "Beat").

Only the holder of the current epoch can claim a slot, and a slot is claimed once; the claim
also moves the entry's last-run marker, so a new leader resumes exactly where the old one
stopped.
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


async def current_epoch(redis: aioredis.Redis) -> int:
    return int(await redis.get(keys.BEAT_EPOCH) or 0)


async def raise_epoch(redis: aioredis.Redis, epoch: int) -> bool:
    """Make `epoch` current (Kubernetes election); False if a newer epoch exists."""
    script = redis.register_script(lua(__file__, "fence_raise"))
    return bool(await script(keys=[keys.BEAT_EPOCH], args=[epoch]))


async def claim(
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
        keys=[keys.BEAT_EPOCH, keys.beat_slot(entry, due_ms), keys.BEAT_LAST],
        args=[epoch, entry, due_ms, ttl_ms, record, mode],
    )
    return Claim(int(got))


async def last_runs(redis: aioredis.Redis) -> dict[str, int]:
    raw = await redis.hgetall(keys.BEAT_LAST)
    return {str(k): int(v) for k, v in raw.items()}
