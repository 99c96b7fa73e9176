"""`celery-stack-worker-scans [celery worker options]`: the scans queue's worker."""

from __future__ import annotations

import sys

from celery_stack_core.worker import worker_main


def main(argv: list[str] | None = None) -> None:
    worker_main("scans", sys.argv[1:] if argv is None else argv)
