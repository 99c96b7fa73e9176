"""`celery-stack-worker-scans [celery worker options]`: the scans queue's worker."""

from __future__ import annotations

import sys

from celery_stack_core.config import get_settings
from celery_stack_core.worker import prepare_multiproc_dir, run_worker


def main(argv: list[str] | None = None) -> None:
    settings = get_settings()
    prepare_multiproc_dir(settings)
    from celery_stack_scans.tasks import app  # after the multiprocess dir is set

    run_worker(app, settings, "scans", sys.argv[1:] if argv is None else argv)
