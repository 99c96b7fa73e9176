"""Leaked locks: a lock whose owner is gone (owners.judge) is released by compare-and-delete of
the owner record the janitor read; a gone owner's lock set and heartbeat are dropped once it holds
nothing. A lock whose owner lives, or whose owner cannot be judged, is never touched: its TTL
frees it if its holder stops renewing.

Pod snapshots are taken after the locks are read (owners.py says why).

Metrics: the janitor runs in processes nobody scrapes (a CronJob's pod exits first, the operator
has no metrics port), so its lock figures live in Redis beside the locks (keys.LOCK_STATS) and
the maintenance worker's LockStats collector exports them at scrape time:

    sweep (real run)  HSET held <locks it left held> -> celery_stack_locks_held
    release_lock.lua  DEL lock + HINCRBY leaked 1   -> celery_stack_locks_leaked_total
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

import redis
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from celery_stack_core import keys, metrics
from celery_stack_core.lua import lua
from celery_stack_core.sweeps.base import Action, Recorder, SweepContext, SweepReport
from celery_stack_core.sweeps.owners import Verdict, judge, parse_owner

log = logging.getLogger("celery_stack.janitor")
NAME = "locks"
LOCK_MATCH = keys.lock("*")
OWNER_SET_MATCH = keys.owner_locks("*")


@dataclass(frozen=True)
class Seen:
    key: str
    record: str
    owner: str
    silence: float


def owner_of(record: str) -> str:
    try:
        value = json.loads(record)
    except ValueError:
        return ""
    return str(value.get("owner", "")) if isinstance(value, dict) else ""


async def silences(ctx: SweepContext, owners: set[str]) -> dict[str, float]:
    """Seconds since each owner's last heartbeat: the heartbeat key is written with 2 x the
    lease TTL (recorded in the record) on every acquire and renewal; gone means infinite."""
    ordered = sorted(owners)
    pipe = ctx.redis.pipeline(transaction=False)
    for owner in ordered:
        pipe.get(keys.owner_heartbeat(owner))
        pipe.pttl(keys.owner_heartbeat(owner))
    replies = await pipe.execute()
    out: dict[str, float] = {}
    for i, owner in enumerate(ordered):
        record, pttl = replies[2 * i], replies[2 * i + 1]
        if record is None or pttl == -2:
            out[owner] = math.inf
            continue
        try:
            ttl = float(json.loads(record).get("ttl", 0))
        except (ValueError, AttributeError):
            ttl = 0.0
        # no TTL recorded (older records): treat the heartbeat as fresh
        out[owner] = max(0.0, 2 * ttl - pttl / 1000) if ttl and pttl >= 0 else 0.0
    return out


async def _read_locks(ctx: SweepContext, rec: Recorder) -> list[Seen]:
    seen: list[tuple[str, str]] = []
    cursor = 0
    while True:
        cursor, names = await ctx.redis.scan(
            cursor, match=LOCK_MATCH, count=ctx.settings.janitor.scan_count
        )
        rec.examined(len(names))
        if names:
            values = await ctx.redis.mget(names)
            seen += [(k, v) for k, v in zip(names, values, strict=True) if v is not None]
        if cursor == 0 or rec.report.examined >= ctx.settings.janitor.max_keys:
            rec.report.complete = cursor == 0
            break
    owners = {owner_of(v) for _, v in seen}
    quiet = await silences(ctx, owners - {""})
    return [Seen(k, v, owner_of(v), quiet.get(owner_of(v), 0.0)) for k, v in seen]


def verdict(ctx: SweepContext, seen: Seen, pods: frozenset[str] | None) -> Verdict:
    if not seen.owner:
        return Verdict(False, "owner_unknown")
    return judge(
        parse_owner(seen.owner),
        silence=seen.silence,
        grace=ctx.settings.janitor.lock_grace,
        pods=pods,
    )


async def release(ctx: SweepContext, rec: Recorder, seen: Seen, reason: str) -> bool:
    """True when the lock was released (a real run), or would be (a dry run)."""
    action = Action("release", seen.key, (("owner", seen.owner), ("reason", reason)))
    rec.found(action)
    if rec.dry_run:
        rec.done(action)
        return True
    script = ctx.redis.register_script(lua(__file__, "release_lock"))
    if await script(keys=[seen.key, keys.LOCK_STATS], args=[seen.record]):  # counts it too
        rec.done(action)
        return True
    rec.skip("changed", seen.key)
    return False


async def _drop_owners(
    ctx: SweepContext, rec: Recorder, pods: frozenset[str] | None, holding: set[str]
) -> None:
    """Owner sets of gone owners that hold no lock (after this run's releases)."""
    cursor, names = 0, []
    while True:
        cursor, batch = await ctx.redis.scan(
            cursor, match=OWNER_SET_MATCH, count=ctx.settings.janitor.scan_count
        )
        names += batch
        if cursor == 0 or len(names) >= ctx.settings.janitor.max_keys:
            break
    prefix, suffix = keys.owner_locks("").split("::")
    owners = {n[len(prefix) + 1 : -len(suffix) - 1] for n in names}
    owners = {o for o in owners if o not in holding}
    quiet = await silences(ctx, owners)
    script = ctx.redis.register_script(lua(__file__, "drop_owner"))
    for owner in sorted(owners):
        v = judge(
            parse_owner(owner),
            silence=quiet[owner],
            grace=ctx.settings.janitor.lock_grace,
            pods=pods,
        )
        if not v.gone:
            continue
        action = Action("drop_owner", keys.owner_locks(owner), (("reason", v.reason),))
        rec.found(action)
        if rec.dry_run or await script(
            keys=[keys.owner_locks(owner), keys.owner_heartbeat(owner)],
            args=[f'"owner":{json.dumps(owner)}'],
        ):
            rec.done(action)
        else:
            rec.skip("changed", owner)


async def sweep(ctx: SweepContext, *, dry_run: bool) -> SweepReport:
    rec = Recorder(ctx, NAME, dry_run=dry_run)
    locks = await _read_locks(ctx, rec)
    pods = await ctx.pods()  # after the reads: see owners.py
    holding: set[str] = set()
    released = 0
    for seen in locks:
        v = verdict(ctx, seen, pods)
        if v.gone:
            released += await release(ctx, rec, seen, v.reason)
        else:
            holding.add(seen.owner)
            rec.skip(v.reason, seen.key)
    if not dry_run:  # what this run left held (a lock re-taken meanwhile counts as held)
        await ctx.redis.hset(keys.LOCK_STATS, "held", len(locks) - released)
    await _drop_owners(ctx, rec, pods, holding)
    return rec.finish()


class LockStats(Collector):
    """celery_stack_locks_held and celery_stack_locks_leaked_total from keys.LOCK_STATS, for the
    maintenance worker's /metrics: one HMGET per scrape. Before any real locks sweep both read 0
    (nothing seen, nothing released); a Redis that answers nothing leaves them out."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def collect(self) -> Iterator[Metric]:
        try:
            held, leaked = self.client.hmget(keys.LOCK_STATS, ["held", "leaked"])
        except redis.RedisError as exc:
            log.warning("lock stats unreadable at scrape", extra={"error": repr(exc)})
            return
        yield GaugeMetricFamily(metrics.LOCKS_HELD_NAME, metrics.LOCKS_HELD_HELP, int(held or 0))
        yield CounterMetricFamily(
            metrics.LOCKS_LEAKED_NAME, metrics.LOCKS_LEAKED_HELP, int(leaked or 0)
        )
