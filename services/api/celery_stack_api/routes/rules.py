"""GET /api/v1/maintenance/rules (admin): every maintenance rule, its definition, last run,
rows it changed and next due time."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel

from celery_stack_api.deps import AdminDep, StateDep
from celery_stack_core.models import RuleRunStatus
from celery_stack_core.rules import load_rules
from celery_stack_core.rules.engine import last_runs, task_name
from celery_stack_core.rules.schedule import next_due

router = APIRouter(prefix="/api/v1/maintenance", tags=["maintenance"])


class LastRun(BaseModel):
    task_id: str
    status: RuleRunStatus
    attempts: int
    rows_changed: int
    batches: int
    started_at: datetime
    finished_at: datetime | None
    error: str | None


class RuleStatus(BaseModel):
    name: str
    kind: str
    task: str
    enabled: bool
    every: float | None
    cron: str | None
    next_due: datetime | None
    last_run: LastRun | None
    definition: dict[str, Any]


def _last(run: dict[str, Any] | None) -> LastRun | None:
    if run is None:
        return None
    return LastRun(**{**run, "rows_changed": run["rows"]})


@router.get("/rules", response_model=list[RuleStatus])
async def read_rules(*, state: StateDep, _: AdminDep) -> list[RuleStatus]:
    rules = load_rules(state.settings)
    runs = await last_runs(state.engine)
    now = datetime.now(UTC)
    return [
        RuleStatus(
            name=r.name,
            kind=r.kind,
            task=task_name(r),
            enabled=r.enabled,
            every=r.every,
            cron=r.cron,
            next_due=next_due(r, now) if r.enabled else None,
            last_run=_last(runs.get(r.name)),
            definition=r.model_dump(mode="json", by_alias=True),
        )
        for r in rules
    ]
