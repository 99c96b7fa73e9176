"""The `reports` queue of test_queue_added.py: its registry entry and its tasks module.

This is everything a new queue needs in Python: one QueueSpec in the registry (here added at
import, since the product registry must not carry a test queue) and a module with the app.
"""

from __future__ import annotations

from typing import Any

from celery_stack_core.queues import QUEUES, QueueSpec

REPORTS = QueueSpec(
    name="reports",
    command="reports-worker (test)",
    tasks_module="reports_queue",
    soft_time_limit=7,
    time_limit=9,
)
QUEUES.setdefault(REPORTS.name, REPORTS)

from celery_stack_core.celery_app import make_celery  # noqa: E402
from celery_stack_core.config import get_settings  # noqa: E402

app = make_celery(get_settings(), "reports")


# shared=False: a shared task would be added to every Celery app made later in the test session.
@app.task(name="reports.build", bind=True, ignore_result=False, shared=False)
def build(self: Any, n: int) -> dict[str, Any]:
    """What the worker saw: the queue the message came from, its node name, its limits."""
    return {
        "n": n,
        "queue": self.request.delivery_info.get("routing_key"),
        "hostname": self.request.hostname,
        "limits": [self.soft_time_limit, self.time_limit],
    }
