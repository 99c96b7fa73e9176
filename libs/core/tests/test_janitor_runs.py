"""The janitor_runs record and its collector on real PostgreSQL: the newest row per sweep is
exported; the table is read at most once per refresh period however often Prometheus scrapes;
a refresh that cannot reach PostgreSQL keeps serving the values last read."""

from __future__ import annotations

import asyncio
from collections import Counter

from celery_stack_core.sweeps import runs
from celery_stack_core.sweeps.base import SweepReport


def report(sweep: str, found: int, done: int, **skipped: int) -> SweepReport:
    return SweepReport(sweep, dry_run=False, found=found, done=done, skipped=Counter(skipped))


class Counted(runs.RunCollector):
    reads = 0

    async def _read(self) -> list[dict[str, object]]:
        self.reads += 1
        return await super()._read()


def samples(collector: runs.RunCollector) -> dict[tuple[str, tuple[str, ...]], float]:
    return {
        (s.name, tuple(s.labels.values())): s.value
        for family in collector.collect()
        for s in family.samples
    }


async def test_newest_run_per_sweep_read_at_most_once_per_period(settings, clean_db, free_tcp_port):
    await runs.record(clean_db, report("locks", 5, 5), "cli")
    await runs.record(clean_db, report("locks", 2, 1, owner_alive=1), "job")
    await runs.record(clean_db, report("orphaned-results", 3, 3), "cli")
    collector = Counted(settings.stores.database_url, refresh=3600)
    got = await asyncio.to_thread(samples, collector)
    assert got[("celery_stack_janitor_last_run_found", ("locks",))] == 2  # the newest, no sum
    assert got[("celery_stack_janitor_last_run_removed", ("locks",))] == 1
    assert got[("celery_stack_janitor_last_run_skipped", ("locks", "owner_alive"))] == 1
    assert got[("celery_stack_janitor_last_run_found", ("orphaned-results",))] == 3
    for _ in range(5):  # scrapes within the period: served from the cache
        assert await asyncio.to_thread(samples, collector) == got
    assert collector.reads == 1

    # PostgreSQL unreachable at the next refresh: the last values stay (they are still true).
    collector.refresh = 0
    collector.database_url = f"postgresql+asyncpg://x:y@127.0.0.1:{free_tcp_port}/none"
    assert await asyncio.to_thread(samples, collector) == got
    assert collector.reads == 2
