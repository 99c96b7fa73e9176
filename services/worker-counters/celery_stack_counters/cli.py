"""`celery-stack-worker-counters [celery worker options]`: the counters queue's worker."""

from __future__ import annotations

import sys

from celery_stack_core.worker import worker_main


def main() -> None:
    worker_main("counters", sys.argv[1:])
