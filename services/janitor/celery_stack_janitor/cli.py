"""`celery-stack-worker-maintenance [celery worker options]`: the maintenance queue's worker."""

from __future__ import annotations

import sys

from celery_stack_core.worker import worker_main


def worker() -> None:
    worker_main("maintenance", sys.argv[1:])
