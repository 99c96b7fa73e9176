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
from typing import TYPE_CHECKING, Any

from celery import Celery, signals

from celery_stack_core import liveness
from celery_stack_core.config import Settings, get_settings
from celery_stack_core.logs import configure_logging
from celery_stack_core.queues import spec
from celery_stack_core.redis_client import make_redis
from celery_stack_core.tracing import flush_tracing, setup_tracing

if TYPE_CHECKING:  # prometheus_client only after the multiprocess directory exists
    from prometheus_client.registry import Collector

log = logging.getLogger(__name__)
# /healthz fails past this many heartbeat intervals (12 x 5 s = the chart's 60 s liveness age).
LIVENESS_FACTOR = 12


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
    # Imported here: prometheus_client must see PROMETHEUS_MULTIPROC_DIR, set by the entrypoint.
    from celery_stack_core import celery_metrics

    obs = settings.observability
    liveness.install(app, obs.worker_heartbeat_file, obs.worker_heartbeat_interval)
    celery_metrics.install_worker()

    @signals.setup_logging.connect(weak=False)
    def _logging(**_: Any) -> None:
        configure_logging(service, settings.deploy.log_level)

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
    """The worker's port: /metrics (this queue's families), /healthz (not wedged: the liveness
    file is younger than LIVENESS_FACTOR intervals; it stays fresh through a broker outage),
    /readyz (consuming now: the consuming file as fresh as the chart's readiness probe asks),
    anything else 404."""
    from celery_stack_core import celery_metrics, metrics

    obs = settings.observability
    interval = obs.worker_heartbeat_interval
    ready_within = max(3 * interval, 15.0)
    alive_within = LIVENESS_FACTOR * interval
    queue = service.removeprefix("worker-")
    consumed = settings.queue(queue).queues or [queue]
    celery_metrics.note_queues(consumed)
    broker = celery_metrics.BrokerCollector(
        make_redis(settings, settings.broker_url),
        consumed,
        dict(app.conf.broker_transport_options or {}),
        # consuming now (the readiness file), not merely "not wedged" (celery_stack_core.liveness)
        heartbeat_file=liveness.consuming_file(obs.worker_heartbeat_file),
        fresh_within=ready_within,
    )
    extra: list[Collector] = [broker]
    if queue == "maintenance":
        # The maintenance worker is always deployed and scraped: it exports every sweep run's
        # record, the CronJob's included (their pods exit before a scrape; sweeps/runs.py),
        # and the lock figures every janitor process keeps in Redis (sweeps/locks.py).
        from celery_stack_core.sweeps.locks import LockStats
        from celery_stack_core.sweeps.runs import RunCollector

        extra += [RunCollector(settings.stores.database_url), LockStats(make_redis(settings))]
    reg = metrics.registry(metrics.role_of_worker(queue), extra)

    def check(path: str, within: float) -> metrics.Check:
        def run() -> tuple[bool, dict[str, Any]]:
            age = liveness.heartbeat_age(path)
            return age <= within, {"heartbeat_age": round(min(age, 1e9), 3), "max_age": within}

        return run

    alive, consuming = obs.worker_heartbeat_file, liveness.consuming_file(obs.worker_heartbeat_file)
    metrics.serve(
        obs.metrics_port,
        reg,
        {"/healthz": check(alive, alive_within), "/readyz": check(consuming, ready_within)},
    )


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
        "--quiet",  # celery's global option: no ASCII banner, every line printed is JSON
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
    # JSON from the first line: what Celery prints before its setup_logging signal (the root
    # SecurityWarning) would otherwise be raw text. install_hooks configures it again.
    configure_logging(f"worker-{queue}", settings.deploy.log_level)
    prepare_multiproc_dir(settings)
    # Imported after the multiprocess dir is set: the module builds the app and its metrics.
    app = importlib.import_module(spec(queue).tasks_module).app
    run_worker(app, settings, queue, extra)
