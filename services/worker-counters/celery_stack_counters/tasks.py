"""Celery tasks of the counters queue: thin shells over flush_all / recount."""

from __future__ import annotations

from typing import Any

from celery_stack_core import aio, connections
from celery_stack_core.celery_app import make_celery
from celery_stack_core.config import get_settings
from celery_stack_core.identity import owner_id
from celery_stack_core.worker import install_hooks
from celery_stack_counters.flush_all import flush_all
from celery_stack_counters.recount import drain_dirty, reconcile

settings = get_settings()
# Keeps one run well inside the counters time limit even when the dirty set keeps growing.
MAX_RECOUNT_BATCHES = 50
app = make_celery(settings, "celery_stack_counters")
install_hooks(app, settings, "worker-counters")


@app.task(name="counters.flush")
def flush() -> dict[str, Any]:
    results = aio.run(
        flush_all(
            connections.redis(),
            connections.engine(),
            shards=settings.counters.shards,
            owner=owner_id(settings),
            lease_ttl=settings.counters.flush_lease_ttl,
        )
    )
    applied = [r for r in results if r.outcome == "applied"]
    return {"batches": len(applied), "rows": sum(r.applied for r in applied)}


@app.task(name="counters.recount")
def recount() -> int:
    """Drain dirty targets batch by batch; a bounded number per run, the next run goes on."""
    total = 0
    for _ in range(MAX_RECOUNT_BATCHES):
        n = aio.run(
            drain_dirty(
                connections.redis(),
                connections.engine(),
                batch_size=settings.counters.recount_batch_size,
                claim_timeout=settings.counters.recount_claim_timeout,
            )
        )
        total += n
        if n < settings.counters.recount_batch_size:
            break
    return total


@app.task(name="counters.reconcile")
def reconcile_all() -> dict[str, int]:
    return aio.run(
        reconcile(connections.engine(), batch_size=settings.counters.reconcile_batch_size)
    )
