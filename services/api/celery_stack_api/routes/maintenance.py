"""Janitor endpoints, admin scope only (report 002's /api/v1/cache/..., made safe).

    GET  /api/v1/maintenance/status
    GET  /api/v1/maintenance/celery-tasks?orphaned=&state=&cursor=&limit=
    POST /api/v1/maintenance/cleanup/{kind}?dry_run=   dry run: the report, within
                                                        JANITOR_DRY_RUN_TIMEOUT; real run: 202 +
                                                        a job on the maintenance queue (409 when
                                                        one of that kind is queued or running)
    GET  /api/v1/maintenance/jobs/{id}

The sweeps are celery_stack_core.sweeps, shared with the CLI, the worker and the operator.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Response, status

from celery_stack_api.auth import Principal
from celery_stack_api.deps import StateDep, require
from celery_stack_api.state import AppState
from celery_stack_core import outbox, sweeps
from celery_stack_core.sweeps import inspect as views
from celery_stack_core.sweeps import jobs
from celery_stack_core.sweeps.base import SweepContext
from celery_stack_core.sweeps.inspect import TaskState
from celery_stack_core.sweeps.kube import pod_snapshot

router = APIRouter(prefix="/api/v1/maintenance", tags=["maintenance"])
AdminOnly = Annotated[Principal, Depends(require("admin"))]
Kind = Literal["orphaned-tasks", "locks", "stuck-scans", "retention", "full"]
assert set(Kind.__args__) == set(sweeps.KINDS)  # type: ignore[attr-defined]


def _context(state: AppState, *, deadline: float | None = None) -> SweepContext:
    publish = outbox.celery_publisher(state.celery) if state.celery is not None else None
    return SweepContext(
        state.redis,
        state.engine,
        state.settings,
        pods=pod_snapshot(state.settings),
        publish=publish,
        deadline=deadline,
    )


@router.get("/status")
async def read_status(*, state: StateDep, _: AdminOnly) -> dict[str, Any]:
    deadline = time.monotonic() + state.settings.janitor.dry_run_timeout
    return await views.status(_context(state, deadline=deadline))


@router.get("/celery-tasks")
async def read_celery_tasks(
    *,
    state: StateDep,
    _: AdminOnly,
    orphaned: bool | None = None,
    task_state: Annotated[TaskState | None, Query(alias="state")] = None,
    cursor: Annotated[int, Query(ge=0, le=2**64 - 1)] = 0,  # a Redis SCAN cursor: u64
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> dict[str, Any]:
    items, nxt = await views.list_tasks(
        _context(state), orphaned=orphaned, state=task_state, cursor=cursor, limit=limit
    )
    return {"items": items, "next_cursor": nxt or None}


@router.post(
    "/cleanup/{kind}",
    responses={202: {"description": "A real run: the job that does it"}, 409: {}},
)
async def cleanup(
    *, kind: Kind, state: StateDep, principal: AdminOnly, response: Response, dry_run: bool = True
) -> dict[str, Any]:
    if dry_run:
        deadline = time.monotonic() + state.settings.janitor.dry_run_timeout
        reports = await sweeps.run(
            _context(state, deadline=deadline), list(sweeps.KINDS[kind]), dry_run=True
        )
        return {"kind": kind, "dry_run": True, **jobs.totals(reports)}
    try:
        job, msg = await jobs.create(
            state.engine, state.settings, kind=kind, requested_by=principal.name
        )
    except jobs.JobConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    if state.celery is not None:
        await outbox.publish_now(state.engine, outbox.celery_publisher(state.celery), msg)
    response.status_code = status.HTTP_202_ACCEPTED
    return job


@router.get("/jobs/{job_id}")
async def read_job(*, job_id: uuid.UUID, state: StateDep, _: AdminOnly) -> dict[str, Any]:
    job = await jobs.get(state.engine, job_id)
    if job is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"job {job_id} not found")
    return job
