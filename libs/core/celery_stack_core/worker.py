"""What every worker service installs on its Celery app: logging, metrics, tracing, liveness.

A worker's entrypoint calls `run_worker(app, queue, argv)`, which becomes PID 1's celery
process (`exec` in the image) so SIGTERM reaches Celery's warm/soft shutdown directly.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from celery import Celery, signals

from celery_stack_core import liveness
from celery_stack_core.config import Queue, Settings
from celery_stack_core.logs import configure_logging
from celery_stack_core.tracing import flush_tracing, setup_tracing

log = logging.getLogger(__name__)


def prepare_multiproc_dir(settings: Settings) -> None:
    """Prefork children write metrics to files; the dir must be empty at start and set before
    prometheus_client is imported anywhere in this process."""
    path = settings.PROMETHEUS_MULTIPROC_DIR
    if not path:
        return
    shutil.rmtree(path, ignore_errors=True)
    Path(path).mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path


def install_hooks(app: Celery, settings: Settings, service: str) -> None:
    liveness.install(app, settings.WORKER_HEARTBEAT_FILE, settings.WORKER_HEARTBEAT_INTERVAL)

    @signals.setup_logging.connect(weak=False)
    def _logging(**_: Any) -> None:
        configure_logging(service, settings.LOG_LEVEL)

    @signals.worker_init.connect(weak=False)
    def _metrics(**_: Any) -> None:
        from celery_stack_core import metrics

        metrics.serve(settings.METRICS_PORT)

    @signals.worker_process_init.connect(weak=False)
    def _child(**_: Any) -> None:
        setup_tracing(service, settings)

    @signals.worker_process_shutdown.connect(weak=False)
    def _child_exit(pid: int | None = None, **_: Any) -> None:
        from celery_stack_core import metrics

        metrics.mark_process_dead(pid or os.getpid())
        flush_tracing()

    @signals.task_failure.connect(weak=False)
    def _failed(sender: Any = None, **_: Any) -> None:
        from celery_stack_core import metrics

        metrics.TASK_FAILURES.labels(getattr(sender, "name", "unknown")).inc()


def worker_argv(settings: Settings, queue: Queue, extra: list[str]) -> list[str]:
    return [
        "worker",
        "-Q",
        queue,
        "-n",
        f"{queue}@%h",
        "--prefetch-multiplier",
        str(settings.prefetch(queue)),
        "--loglevel",
        settings.LOG_LEVEL,
        *extra,
    ]


def run_worker(app: Celery, settings: Settings, queue: Queue, extra: list[str]) -> None:
    app.worker_main(worker_argv(settings, queue, extra))
