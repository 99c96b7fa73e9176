"""Task id -> the row it is about. Every task id we make says where its row is:

    scan-<uuid>-<attempt>      scans.id            (celery_stack_core.scan_spec.task_id; the
                                                    outbox row of a scan carries the same id)
    janitor-job-<uuid>         maintenance_jobs.id (celery_stack_core.sweeps.jobs)
    beat:<entry>:<due ms>      no row: a schedule slot (fenced in Redis, kept until its TTL)

Any other id is `unknown`: its result is never deleted as an orphan, only given a TTL.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass

_SCAN = re.compile(r"^scan-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})-(\d+)$")
_JOB = re.compile(r"^janitor-job-([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")
RESULT_PREFIX = "celery-task-meta-"


@dataclass(frozen=True)
class TaskRef:
    kind: str  # scan | job | beat | unknown
    row_id: uuid.UUID | None = None


def parse_task_id(task_id: str) -> TaskRef:
    if m := _SCAN.match(task_id):
        return TaskRef("scan", uuid.UUID(m.group(1)))
    if m := _JOB.match(task_id):
        return TaskRef("job", uuid.UUID(m.group(1)))
    if task_id.startswith("beat:"):
        return TaskRef("beat")
    return TaskRef("unknown")


def job_task_id(job_id: uuid.UUID | str) -> str:
    return f"janitor-job-{job_id}"
