"""What every worker service installs on its Celery app: logging, metrics, tracing, liveness.

A worker's entrypoint (the registry's `command`) calls `worker_main(queue, argv)`, which becomes
PID 1's celery process (`exec` in the image) so SIGTERM reaches Celery's warm/soft shutdown
directly. `-Q`, `-n`, the prefetch and the time limits come from the queue registry and its
settings only: argv may add pool, concurrency and child limits, never override those.
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
from pathlib import Path
from typing import Any

from celery import Celery, signals

from celery_stack_core import liveness
from celery_stack_core.config import Settings, get_settings
from celery_stack_core.logs import configure_logging
from celery_stack_core.queues import spec
from celery_stack_core.tracing import flush_tracing, setup_tracing

log = logging.getLogger(__name__)


def prepare_multiproc_dir(settings: Settings) -> None:
    """Prefork children write metrics to files; the dir must be empty at start and set before
    prometheus_client is imported anywhere in this process."""
    path = settings.observability.prometheus_multiproc_dir
    if not path:
        return
    shutil.rmtree(path, ignore_errors=True)
    Path(path).mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path


def install_hooks(app: Celery, settings: Settings, service: str) -> None:
    obs = settings.observability
    liveness.install(app, obs.worker_heartbeat_file, obs.worker_heartbeat_interval)

    @signals.setup_logging.connect(weak=False)
    def _logging(**_: Any) -> None:
        configure_logging(service, settings.deploy.log_level)

    @signals.worker_init.connect(weak=False)
    def _metrics(**_: Any) -> None:
        from celery_stack_core import metrics

        metrics.serve(settings.observability.metrics_port)

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


# Worker options the registry and the settings own: given in argv they would silently win
# (celery takes the last occurrence), so they are refused instead.
OWNED_OPTIONS = (
    "-Q",
    "--queues",
    "--prefetch-multiplier",
    "--soft-time-limit",
    "--time-limit",
    "-l",
    "--loglevel",
)


class OwnedOption(ValueError):
    pass


def worker_argv(settings: Settings, queue: str, extra: list[str]) -> list[str]:
    for arg in extra:
        if arg.split("=", 1)[0] in OWNED_OPTIONS:
            raise OwnedOption(
                f"{arg}: set by the queue registry and its settings "
                f"({spec(queue).env_prefix}*, docs/configuration.md), not on the command line"
            )
    limits = settings.queue(queue)
    # The node name defaults to `<queue>@<host>`; several workers of a queue on one host (tests)
    # pass their own -n.
    named = any(arg.split("=", 1)[0] in ("-n", "--hostname") for arg in extra)
    return [
        "worker",
        "-Q",
        ",".join(limits.queues or [queue]),
        *([] if named else ["-n", f"{queue}@%h"]),
        "--prefetch-multiplier",
        str(limits.prefetch),
        "--loglevel",
        settings.deploy.log_level,
        *extra,
    ]


def run_worker(app: Celery, settings: Settings, queue: str, extra: list[str]) -> None:
    app.worker_main(worker_argv(settings, queue, extra))


def worker_main(queue: str, extra: list[str]) -> None:
    """The body of every worker console script: settings, metrics dir, the queue's tasks."""
    settings = get_settings()
    prepare_multiproc_dir(settings)
    # Imported after the multiprocess dir is set: the module builds the app and its metrics.
    app = importlib.import_module(spec(queue).tasks_module).app
    run_worker(app, settings, queue, extra)
