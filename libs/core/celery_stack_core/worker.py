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
from celery_stack_core.redis_client import make_redis
from celery_stack_core.tracing import flush_tracing, setup_tracing

log = logging.getLogger(__name__)
# /healthz fails past this many heartbeat intervals (12 x 5 s = the chart's 60 s liveness age).
LIVENESS_FACTOR = 12


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
    # Imported here: prometheus_client must see PROMETHEUS_MULTIPROC_DIR, set by the entrypoint.
    from celery_stack_core import celery_metrics

    liveness.install(app, settings.WORKER_HEARTBEAT_FILE, settings.WORKER_HEARTBEAT_INTERVAL)
    celery_metrics.install_worker()

    @signals.setup_logging.connect(weak=False)
    def _logging(**_: Any) -> None:
        configure_logging(service, settings.LOG_LEVEL)

    @signals.worker_init.connect(weak=False)
    def _metrics(**_: Any) -> None:
        serve_worker_metrics(app, settings, service)

    @signals.worker_process_init.connect(weak=False)
    def _child(**_: Any) -> None:
        setup_tracing(service, settings)

    @signals.worker_process_shutdown.connect(weak=False)
    def _child_exit(pid: int | None = None, **_: Any) -> None:
        from celery_stack_core import metrics

        metrics.mark_process_dead(pid or os.getpid())
        flush_tracing()


def serve_worker_metrics(app: Celery, settings: Settings, service: str) -> None:
    """The worker's port: /metrics (this queue's families), /healthz (not wedged: the consuming
    heartbeat is younger than LIVENESS_FACTOR intervals), /readyz (consuming now: as fresh as the
    chart's readiness probe asks), anything else 404."""
    from celery_stack_core import celery_metrics, metrics

    interval = settings.WORKER_HEARTBEAT_INTERVAL
    ready_within = max(3 * interval, 15.0)
    alive_within = LIVENESS_FACTOR * interval
    queue = service.removeprefix("worker-")
    broker = celery_metrics.BrokerCollector(
        make_redis(settings, settings.broker_url),
        [queue],
        dict(app.conf.broker_transport_options or {}),
        heartbeat_file=settings.WORKER_HEARTBEAT_FILE,
        fresh_within=ready_within,
    )
    reg = metrics.registry(metrics.role_of_worker(queue), [broker])

    def check(within: float) -> metrics.Check:
        def run() -> tuple[bool, dict[str, Any]]:
            age = liveness.heartbeat_age(settings.WORKER_HEARTBEAT_FILE)
            return age <= within, {"heartbeat_age": round(min(age, 1e9), 3), "max_age": within}

        return run

    metrics.serve(
        settings.METRICS_PORT,
        reg,
        {"/healthz": check(alive_within), "/readyz": check(ready_within)},
    )


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
