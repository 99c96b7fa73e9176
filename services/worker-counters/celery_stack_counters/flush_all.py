"""Flush every shard of every buffered counter this worker can lease, in one transaction.

The lease only keeps two flushers from doing the same work; correctness never depends on it
(the ledger does that), so a lease lost mid-flush is harmless.
"""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine

from celery_stack_core import metrics
from celery_stack_core.keys import ShardKeys
from celery_stack_core.locks import hold_many
from celery_stack_core.retry import is_transient, with_retry
from celery_stack_core.targets import BUFFERED
from celery_stack_counters.flush import FlushResult, flush_many, flush_shard

log = logging.getLogger(__name__)
# A resumed batch (a crashed flush's) is flushed first, then the live hash: one more round.
# Bounded so a shard that is resumed every time cannot hold the task forever.
MAX_ROUNDS = 3


def all_shards(shards: int) -> list[ShardKeys]:
    return [ShardKeys(t, f, n) for t, f in BUFFERED for n in range(shards)]


async def flush_all(
    redis: aioredis.Redis, engine: AsyncEngine, *, shards: int, owner: str, lease_ttl: float
) -> list[FlushResult]:
    """Flush what this worker can lease (a shard leased by another flusher is skipped; one
    round trip takes every lease): all leased shards in one transaction (flush_many). If that
    transaction fails for a reason other than a connection error, each shard is flushed on its
    own, so one bad shard cannot hold back the others."""
    results: list[FlushResult] = []
    every = all_shards(shards)
    async with hold_many(redis, [sk.lease for sk in every], owner=owner, ttl=lease_ttl) as leases:
        held = {lease.name for lease in leases}
        mine = [sk for sk in every if sk.lease in held]
        todo = mine
        for _ in range(MAX_ROUNDS):
            try:
                done = await with_retry(
                    lambda todo=todo: flush_many(redis, engine, todo), what="flush"
                )
            except Exception as exc:
                if is_transient(exc):
                    _failed(todo, exc)
                log.warning("batched flush failed, flushing shard by shard", exc_info=True)
                results += await _one_by_one(redis, engine, todo)
                break
            results += done
            todo = [ShardKeys(*_parse(r.counter)) for r in done if r.resumed]
            if not todo:
                break
        await _report_buffered(redis, mine)
    return results


def _parse(name: str) -> tuple[str, str, int]:
    target, field, shard = name.split(":")
    return target, field, int(shard)


async def _one_by_one(
    redis: aioredis.Redis, engine: AsyncEngine, shards: list[ShardKeys]
) -> list[FlushResult]:
    results: list[FlushResult] = []
    failed: list[str] = []
    for sk in shards:
        try:
            res = await flush_shard(redis, engine, sk)
            results.append(res)
            if res.resumed:
                results.append(await flush_shard(redis, engine, sk))
        except Exception:
            # Counted and logged, never swallowed silently; the in-flight batch stays in Redis
            # and the next flush resumes it.
            metrics.FLUSH_FAILURES.labels(sk.name).inc()
            log.exception("flush failed", extra={"counter": sk.name})
            failed.append(sk.name)
    if failed:
        raise FlushFailed(failed)
    return results


def _failed(shards: list[ShardKeys], exc: Exception) -> None:
    """A store stayed unreachable through the retries: every shard failed; nothing to isolate."""
    for sk in shards:
        metrics.FLUSH_FAILURES.labels(sk.name).inc()
    log.error("flush failed", extra={"shards": len(shards), "error": repr(exc)})
    raise FlushFailed([sk.name for sk in shards]) from exc


async def _report_buffered(redis: aioredis.Redis, shards: list[ShardKeys]) -> None:
    if not shards:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for sk in shards:
            pipe.hlen(sk.live)
            pipe.hlen(sk.inflight)
        sizes = await pipe.execute()
    for i, sk in enumerate(shards):
        metrics.BUFFERED.labels(sk.name).set(sizes[2 * i] + sizes[2 * i + 1])


class FlushFailed(RuntimeError):
    def __init__(self, counters: list[str]) -> None:
        super().__init__(f"flush failed for {len(counters)} shard(s): {', '.join(counters)}")
        self.counters = counters
