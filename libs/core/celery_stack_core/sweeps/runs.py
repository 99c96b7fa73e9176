"""Every finished real sweep run, recorded in PostgreSQL and exported by a long-lived process.

    sweeps.run() -> record(): INSERT one janitor_runs row per sweep (and prune that sweep's rows
                   older than KEEP) -> RunCollector on the maintenance worker's /metrics: the
                   newest row per sweep, read at most once per REFRESH seconds

Why: the CronJob's pods exit before Prometheus scrapes them, so their in-process metrics are lost
and CeleryStackJanitorNotRunning would see only the API's jobs. PostgreSQL rather than Redis: it
is the system of record and survives a Redis flush or eviction, and the run history is worth a
query (`SELECT ... FROM janitor_runs`). No Pushgateway: one more component to run and watch.

Each run writes exactly one row per sweep, and the collector exports the newest row's values as
gauges (never sums of rows), so a run is counted once whichever process ran it; several
maintenance worker replicas export the same values, which the alerts fold with `max by (sweep)`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from celery_stack_core import metrics
from celery_stack_core.models import JanitorRun
from celery_stack_core.sweeps.base import SweepReport

log = logging.getLogger("celery_stack.janitor")
RUNS = JanitorRun.__table__
KEEP = timedelta(days=7)  # run history kept per sweep; the exporter needs only the newest row
REFRESH = 15.0  # seconds: the most often a scrape reads the table


async def record(engine: AsyncEngine, report: SweepReport, source: str) -> None:
    """One row for one finished real run; the same transaction prunes this sweep's old rows
    (an index range on (sweep, finished_at), so the work per run stays small)."""
    async with engine.begin() as conn:
        await conn.execute(
            insert(RUNS).values(
                sweep=report.sweep,
                source=source,
                found=report.found,
                removed=report.done,
                skipped=dict(report.skipped),
                duration_seconds=report.duration,
                complete=report.complete,
            )
        )
        await conn.execute(
            delete(RUNS).where(RUNS.c.sweep == report.sweep, RUNS.c.finished_at < func.now() - KEEP)
        )


async def latest(engine: AsyncEngine) -> list[dict[str, Any]]:
    """The newest run of each sweep."""
    stmt = (
        select(
            RUNS.c.sweep,
            func.extract("epoch", RUNS.c.finished_at).label("finished"),
            RUNS.c.found,
            RUNS.c.removed,
            RUNS.c.skipped,
            RUNS.c.duration_seconds,
        )
        .distinct(RUNS.c.sweep)
        .order_by(RUNS.c.sweep, RUNS.c.finished_at.desc(), RUNS.c.id.desc())
    )
    async with engine.connect() as conn:
        return [dict(row._mapping) for row in await conn.execute(stmt)]


class RunCollector(Collector):
    """celery_stack_janitor_last_run_* from janitor_runs, for the maintenance worker's /metrics.

    The scrape thread has no event loop of its own and the worker's engine belongs to another
    loop, so a refresh opens one connection on a loop of its own (NullPool), at most once per
    REFRESH seconds. A refresh that fails keeps the previous values: they are still the truth
    about the runs they describe, and dropping them would hide a stale janitor from the alert."""

    def __init__(self, database_url: str, refresh: float = REFRESH) -> None:
        self.database_url = database_url
        self.refresh = refresh
        self._rows: list[dict[str, Any]] = []
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    async def _read(self) -> list[dict[str, Any]]:
        engine = create_async_engine(self.database_url, poolclass=NullPool)
        try:
            return await latest(engine)
        finally:
            await engine.dispose()

    def rows(self) -> list[dict[str, Any]]:
        with self._lock:  # concurrent scrapes share one refresh
            if time.monotonic() - self._read_at >= self.refresh:
                self._read_at = time.monotonic()
                try:
                    self._rows = asyncio.run(self._read())
                except (SQLAlchemyError, OSError) as exc:
                    log.warning(
                        "janitor runs unreadable at scrape; serving the last values read",
                        extra={"error": repr(exc)},
                    )
            return self._rows

    def collect(self) -> Iterator[Metric]:
        rows = self.rows()
        families = {
            name: GaugeMetricFamily(name, doc, labels=list(labels))
            for name, labels, doc in metrics.JANITOR_RUN_FAMILIES
        }
        ts, found, removed, skipped, duration = families.values()
        for row in rows:
            sweep = [row["sweep"]]
            ts.add_metric(sweep, float(row["finished"]))
            found.add_metric(sweep, row["found"])
            removed.add_metric(sweep, row["removed"])
            for reason, n in sorted(row["skipped"].items()):
                skipped.add_metric([row["sweep"], reason], n)
            duration.add_metric(sweep, row["duration_seconds"])
        yield from families.values()
