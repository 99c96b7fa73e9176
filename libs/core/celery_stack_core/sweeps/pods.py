"""A worker pod was deleted (the operator's pod event handler): release what it owned at once.

Kubernetes removes a pod object only after its containers stopped, so its processes are gone:
its locks are released (compare-and-delete of each observed record) and its running scans are
requeued as new attempts (or dead at the cap), without waiting for heartbeats or TTLs.
"""

from __future__ import annotations

from celery_stack_core import keys
from celery_stack_core.sweeps import locks, scans
from celery_stack_core.sweeps.base import Recorder, SweepContext, SweepReport
from celery_stack_core.sweeps.owners import Verdict

NAME = "pod-deleted"


async def _owned_locks(ctx: SweepContext, pod_uid: str) -> list[locks.Seen]:
    seen: list[locks.Seen] = []
    cursor = 0
    while True:
        cursor, sets = await ctx.redis.scan(
            cursor,
            match=keys.owner_locks(f"pod:{pod_uid}:*"),
            count=ctx.settings.janitor.scan_count,
        )
        for owner_set in sets:
            for lock in sorted(await ctx.redis.smembers(owner_set)):
                record = await ctx.redis.get(lock)
                owner = locks.owner_of(record or "")
                if record and owner.startswith(f"pod:{pod_uid}:"):
                    seen.append(locks.Seen(lock, record, owner, float("inf")))
        if cursor == 0:
            return seen


async def release_pod(ctx: SweepContext, pod_uid: str, *, dry_run: bool = False) -> SweepReport:
    rec = Recorder(ctx, NAME, dry_run=dry_run)
    for seen in await _owned_locks(ctx, pod_uid):
        rec.examined(1)
        await locks.release(ctx, rec, seen, "pod_deleted")
    running = await scans.running_scans(ctx, stale_after=0, worker_like=f"pod:{pod_uid}:%")
    rec.examined(len(running))
    await scans.settle(ctx, rec, [(s, Verdict(True, "pod_deleted")) for s in running])
    return rec.finish()
