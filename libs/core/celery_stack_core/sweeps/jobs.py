"""Maintenance jobs: a real sweep started through the API runs on the maintenance queue.

    POST cleanup/{kind}  ->  create(): INSERT job + outbox row in one transaction (409 when a job
                             of that kind is queued or running) -> publish after COMMIT
    worker               ->  execute(): queued -> running (compare-and-set), each sweep's report
                             into `progress` with a heartbeat, then succeeded/failed + report
    GET jobs/{id}        ->  get()

A job whose worker died (heartbeat older than MAINTENANCE_TIME_LIMIT) or that never started
(queued longer than CELERY_VISIBILITY_TIMEOUT) no longer blocks its kind: the next create marks
it failed first.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from celery_stack_core import outbox
from celery_stack_core.config import Settings
from celery_stack_core.models import ACTIVE_JOB_STATUSES, JobStatus, MaintenanceJob
from celery_stack_core.sweeps import KINDS, run
from celery_stack_core.sweeps.base import SweepContext, SweepReport
from celery_stack_core.sweeps.taskids import job_task_id

log = logging.getLogger(__name__)
JOB_TASK = "maintenance.janitor_job"
jobs = MaintenanceJob.__table__
COLUMNS = [
    jobs.c[n]
    for n in (
        "id",
        "kind",
        "status",
        "requested_by",
        "progress",
        "report",
        "error",
        "created_at",
        "started_at",
        "heartbeat_at",
        "finished_at",
    )
]


class JobConflict(RuntimeError):
    """A job of this kind is already queued or running."""


def _dump(row: Any) -> dict[str, Any]:
    out = dict(row._mapping)
    out["id"] = str(out["id"])
    for k in ("created_at", "started_at", "heartbeat_at", "finished_at"):
        out[k] = out[k].isoformat() if out[k] else None
    return out


async def _expire_abandoned(engine: AsyncEngine, settings: Settings, kind: str) -> None:
    now = func.now()
    dead = or_(
        and_(
            jobs.c.status == "running",
            jobs.c.heartbeat_at < now - timedelta(seconds=settings.queue("maintenance").time_limit),
        ),
        and_(
            jobs.c.status == "queued",
            jobs.c.created_at < now - timedelta(seconds=settings.celery.visibility_timeout),
        ),
    )
    async with engine.begin() as conn:
        res = await conn.execute(
            update(jobs)
            .where(jobs.c.kind == kind, dead)
            .values(status="failed", finished_at=now, error="abandoned: its worker is gone")
            .returning(jobs.c.id)
        )
        for (job_id,) in res:
            log.warning("maintenance job abandoned", extra={"job_id": str(job_id), "kind": kind})


async def create(
    engine: AsyncEngine, settings: Settings, *, kind: str, requested_by: str
) -> tuple[dict[str, Any], outbox.OutboxMessage]:
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}")
    await _expire_abandoned(engine, settings, kind)
    job_id = uuid.uuid4()
    try:
        async with engine.begin() as conn:
            row = (
                await conn.execute(
                    insert(jobs)
                    .values(
                        id=job_id,
                        kind=kind,
                        requested_by=requested_by,
                        progress={"sweeps": list(KINDS[kind]), "finished": []},
                    )
                    .returning(*COLUMNS)
                )
            ).one()
            msg = await outbox.add(
                conn, task_name=JOB_TASK, task_id=job_task_id(job_id), args=[str(job_id)]
            )
    except IntegrityError as exc:
        raise JobConflict(f"a {kind!r} job is already queued or running") from exc
    return _dump(row), msg


async def get(engine: AsyncEngine, job_id: uuid.UUID) -> dict[str, Any] | None:
    async with engine.connect() as conn:
        row = (await conn.execute(select(*COLUMNS).where(jobs.c.id == job_id))).first()
    return None if row is None else _dump(row)


def totals(reports: list[SweepReport]) -> dict[str, Any]:
    return {
        "found": sum(r.found for r in reports),
        "done": sum(r.done for r in reports),
        "skipped": sum(sum(r.skipped.values()) for r in reports),
        "sweeps": [r.as_dict() for r in reports],
    }


async def execute(ctx: SweepContext, job_id: uuid.UUID) -> str:
    """Run a queued job; a job that is not queued (done, or taken by a redelivery) is a no-op."""
    async with ctx.engine.begin() as conn:
        row = (
            await conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.status == "queued")
                .values(status="running", started_at=func.now(), heartbeat_at=func.now())
                .returning(jobs.c.kind, jobs.c.progress)
            )
        ).first()
    if row is None:
        return "not_queued"
    done: list[SweepReport] = []

    async def progress(report: SweepReport) -> None:
        done.append(report)
        async with ctx.engine.begin() as conn:
            await conn.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(
                    heartbeat_at=func.now(),
                    progress={**row.progress, "finished": [r.sweep for r in done], **totals(done)},
                )
            )

    try:
        await run(ctx, list(KINDS[row.kind]), dry_run=False, progress=progress, source="job")
    except Exception as exc:
        log.exception("maintenance job failed", extra={"job_id": str(job_id)})
        await _finish(ctx.engine, job_id, "failed", totals(done), repr(exc)[:500])
        raise
    await _finish(ctx.engine, job_id, "succeeded", totals(done), None)
    return "succeeded"


async def _finish(
    engine: AsyncEngine,
    job_id: uuid.UUID,
    status: JobStatus,
    report: dict[str, Any],
    error: str | None,
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            update(jobs)
            .where(jobs.c.id == job_id, jobs.c.status.in_(ACTIVE_JOB_STATUSES))
            .values(status=status, report=report, error=error, finished_at=func.now())
        )
