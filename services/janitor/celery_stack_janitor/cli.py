"""`celery-stack-worker-maintenance [celery worker options]`: the maintenance queue's worker."""

from __future__ import annotations

import sys

from celery_stack_core.config import get_settings
from celery_stack_core.worker import prepare_multiproc_dir, run_worker


def worker() -> None:
    settings = get_settings()
    prepare_multiproc_dir(settings)
    from celery_stack_janitor.tasks import app  # after the multiprocess dir is set

    run_worker(app, settings, "maintenance", sys.argv[1:])
