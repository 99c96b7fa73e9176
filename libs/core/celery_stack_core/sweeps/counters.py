"""Dead-owner state of the counters: in-flight flush batches nobody is flushing, and dirty-set
claims of drainers that died.

In-flight batches are resumed by the flush itself, never by the janitor: the flush's claim
returns an existing in-flight batch with its original id and the ledger decides whether it was
applied (services/worker-counters/flush.py). So the janitor only *sends* `counters.flush` to the
counters queue when a batch has waited longer than JANITOR_INFLIGHT_MAX_AGE with no flush lease
held; it does not import the counters service (services talk through queues) and it duplicates
none of the exactly-once protocol. One send per run, whatever the number of stale shards.
"""

from __future__ import annotations

import time
import uuid

from celery_stack_core import keys
from celery_stack_core.lua import lua
from celery_stack_core.sweeps.base import Action, Recorder, SweepContext, SweepReport

INFLIGHT = "inflight-batches"
CLAIMS = "dirty-claims"
FLUSH_TASK = "counters.flush"
BATCH_MATCH = f"{keys.PREFIX}:cnt:*:batch"


def shard_name(batch_key: str) -> str:
    return batch_key[batch_key.index("{") + 1 : batch_key.rindex("}")]


async def current_batches(ctx: SweepContext) -> dict[str, str]:
    """Batch key -> batch id of every in-flight batch (what a flush could still resume)."""
    out: dict[str, str] = {}
    cursor = 0
    while True:
        cursor, names = await ctx.redis.scan(
            cursor, match=BATCH_MATCH, count=ctx.settings.janitor.scan_count
        )
        if names:
            for name, value in zip(names, await ctx.redis.mget(names), strict=True):
                if value is not None:
                    out[name] = value
        if cursor == 0:
            return out


async def sweep_inflight(ctx: SweepContext, *, dry_run: bool) -> SweepReport:
    rec = Recorder(ctx, INFLIGHT, dry_run=dry_run)
    batches = await current_batches(ctx)
    rec.examined(len(batches))
    now = time.time()
    stale: list[Action] = []
    for key, batch_id in sorted(batches.items()):
        name = shard_name(key)
        since = await ctx.redis.get(key.replace(":batch", ":inflight_since"))
        age = now - int(since) / 1000 if since else float("inf")
        if age < ctx.settings.janitor.inflight_max_age:
            rec.skip("young", key)
        elif await ctx.redis.exists(keys.lock(f"flush:{name}")):
            rec.skip("flush_running", key)
        else:
            stale.append(Action("resume", name, (("batch_id", batch_id),)))
    for action in stale:
        rec.found(action)
    if stale and not dry_run:
        if ctx.send_task is None:
            rec.skip("no_producer", n=len(stale))
            return rec.finish()
        await ctx.send_task(FLUSH_TASK, f"janitor-flush-{uuid.uuid4()}")
    for action in stale:
        rec.done(action)
    return rec.finish()


async def sweep_claims(ctx: SweepContext, *, dry_run: bool) -> SweepReport:
    rec = Recorder(ctx, CLAIMS, dry_run=dry_run)
    s = ctx.settings
    before_ms = int((time.time() - s.counters.recount_claim_timeout - s.janitor.claim_grace) * 1000)
    claimed = await ctx.redis.zrangebyscore(
        keys.DIRTY_CLAIMED, "-inf", before_ms, start=0, num=s.janitor.max_keys, withscores=True
    )
    rec.examined(len(claimed))
    script = ctx.redis.register_script(lua(__file__, "return_claim"))
    for member, score in claimed:
        action = Action("return", member, (("claimed_ms", int(score)),))
        rec.found(action)
        if dry_run or await script(
            keys=[keys.DIRTY, keys.DIRTY_CLAIMED], args=[member, int(score)]
        ):
            rec.done(action)
        else:
            rec.skip("changed", member)
    return rec.finish()
