"""The janitor's sweeps: plain async functions that every entry point calls (the CLI
`celery-stack-janitor`, the API's /api/v1/maintenance endpoints, the maintenance worker's job
task, the CronJob and the kopf operator). They live in libs/core because the API must not import
services/janitor (DESIGN "Layout").

    report = await run(ctx, names, dry_run=True)   # plan only; equals what a real run then does
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from celery_stack_core.sweeps import counters, locks, results, retention, runs, scans, unsent
from celery_stack_core.sweeps.base import Progress, SweepContext, SweepReport

Sweep = Callable[..., Awaitable[SweepReport]]

# In the order a full run takes them: owners first (what they release, later sweeps see).
SWEEPS: dict[str, Sweep] = {
    locks.NAME: locks.sweep,
    scans.NAME: scans.sweep,
    counters.INFLIGHT: counters.sweep_inflight,
    counters.CLAIMS: counters.sweep_claims,
    unsent.NAME: unsent.sweep,
    results.NAME: results.sweep,
    retention.NAME: retention.sweep,
}

# The API's cleanup kinds (report 002's endpoints, and ours) -> the sweeps each runs.
KINDS: dict[str, tuple[str, ...]] = {
    "orphaned-tasks": (results.NAME,),
    "locks": (locks.NAME, counters.INFLIGHT, counters.CLAIMS),
    "stuck-scans": (scans.NAME, unsent.NAME),
    "retention": (retention.NAME,),
    "full": tuple(SWEEPS),
}


class UnknownSweep(ValueError):
    pass


def select_sweeps(only: list[str] | None) -> list[str]:
    if not only:
        return list(SWEEPS)
    unknown = [n for n in only if n not in SWEEPS]
    if unknown:
        raise UnknownSweep(f"unknown sweep(s) {unknown}; known: {sorted(SWEEPS)}")
    return [n for n in SWEEPS if n in only]


async def run(
    ctx: SweepContext,
    names: list[str],
    *,
    dry_run: bool,
    progress: Progress | None = None,
    source: str = "cli",
) -> list[SweepReport]:
    """Run the sweeps in order. Each real run is recorded in janitor_runs (`source`: cli for
    the CLI and the CronJobs that run it, job for the API's jobs), which the maintenance worker
    exports: the one place every entry point's runs reach Prometheus (sweeps/runs.py)."""
    reports = []
    for name in names:
        report = await SWEEPS[name](ctx, dry_run=dry_run)
        if not dry_run:
            await runs.record(ctx.engine, report, source)
        reports.append(report)
        if progress is not None:
            await progress(report)
    return reports


__all__ = ["KINDS", "SWEEPS", "SweepContext", "SweepReport", "UnknownSweep", "run", "select_sweeps"]
