"""`celery-stack-worker-counters [celery worker options]`: the counters queue's worker."""

from __future__ import annotations

import sys

from celery_stack_core.config import get_settings
from celery_stack_core.worker import prepare_multiproc_dir, run_worker


def main() -> None:
    settings = get_settings()
    prepare_multiproc_dir(settings)
    from celery_stack_counters.tasks import app  # after the multiprocess dir is set

    run_worker(app, settings, "counters", sys.argv[1:])
