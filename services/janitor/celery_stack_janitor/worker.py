"""`celery-stack-worker-maintenance [celery worker options]`: the maintenance queue's worker.

A module of its own, importing nothing at load time: worker_main must create the Prometheus
multiprocess directory before anything imports prometheus_client (the janitor CLI's module
imports the sweeps, hence the metrics).
"""

from __future__ import annotations

import sys


def main() -> None:
    from celery_stack_core.worker import worker_main

    worker_main("maintenance", sys.argv[1:])
