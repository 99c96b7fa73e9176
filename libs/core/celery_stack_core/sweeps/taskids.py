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

_UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
_SCAN = re.compile(rf"^scan-({_UUID})-(\d+)$")
_JOB = re.compile(rf"^janitor-job-({_UUID})$")
RESULT_PREFIX = "celery-task-meta-"
# The same two forms, matched in bulk over scan_results.lua's packed lines "<result key> <expiry>"
# (one findall per SCAN step instead of a parse and a UUID object per key). Groups: the key, the
# scan id, the job id, the expiry. A line that does not match is not about a row: never deleted.
PACKED_ROW_RESULTS = re.compile(
    rf"^({re.escape(RESULT_PREFIX)}(?:scan-({_UUID})-\d+|janitor-job-({_UUID}))) (-?\d+)$",
    re.MULTILINE,
)


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
