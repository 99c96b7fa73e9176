"""Flush every shard of every buffered counter, each under its own lease."""

from __future__ import annotations

import logging

import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine

from celery_stack_core import metrics
from celery_stack_core.keys import ShardKeys
from celery_stack_core.locks import hold
from celery_stack_core.retry import with_retry
from celery_stack_core.targets import BUFFERED
from celery_stack_counters.flush import FlushResult, StepHook, _no_hook, flush_shard

log = logging.getLogger(__name__)


def all_shards(shards: int) -> list[ShardKeys]:
    return [ShardKeys(t, f, n) for t, f in BUFFERED for n in range(shards)]


async def flush_all(  # noqa: PLR0913 - `hook` leaves when flush.py adopts core HOOKS
    redis: aioredis.Redis,
    engine: AsyncEngine,
    *,
    shards: int,
    owner: str,
    lease_ttl: float,
    hook: StepHook = _no_hook,
) -> list[FlushResult]:
    """Flush what this worker can lease; a shard leased by another flusher is skipped.

    The lease only keeps two flushers from doing the same work; correctness never depends
    on it (the ledger does that), so a lease lost mid-flush is harmless.
    """
    results: list[FlushResult] = []
    failed: list[str] = []
    for sk in all_shards(shards):
        try:
            async with hold(redis, sk.lease, owner=owner, ttl=lease_ttl) as lease:
                if lease is None:
                    continue
                while True:
                    res = await with_retry(
                        lambda sk=sk: flush_shard(redis, engine, sk, hook),
                        what=f"flush {sk.name}",
                    )
                    results.append(res)
                    if not res.resumed:
                        break  # a resumed batch was a crashed flush's: now do the live one
                total = await redis.hlen(sk.live) + await redis.hlen(sk.inflight)
                metrics.BUFFERED.labels(sk.name).set(total)
        except Exception:
            # Counted and logged, never swallowed silently; the in-flight batch stays in Redis
            # and the next flush resumes it.
            metrics.FLUSH_FAILURES.labels(sk.name).inc()
            log.exception("flush failed", extra={"counter": sk.name})
            failed.append(sk.name)
    if failed:
        raise FlushFailed(failed)
    return results


class FlushFailed(RuntimeError):
    def __init__(self, counters: list[str]) -> None:
        super().__init__(f"flush failed for {len(counters)} shard(s): {', '.join(counters)}")
        self.counters = counters
