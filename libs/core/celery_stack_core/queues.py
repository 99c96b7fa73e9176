"""The queue registry: one declaration per Celery queue, read by everything that needs queues.

- the Celery factory (celery_app.py): routing by task-name prefix, the declared kombu queues,
  time-limit annotations;
- the settings (config.py): per-queue env variables `<NAME>_SOFT_TIME_LIMIT`, `<NAME>_TIME_LIMIT`,
  `<NAME>_PREFETCH`, `<NAME>_QUEUES`, defaulting to the entry's values;
- the worker entrypoints (worker.py): `-Q`, `-n`, `--prefetch-multiplier` and the tasks module;
- the chart: `queues.<name>` of values.yaml must name a registered queue and its `command`
  (tests/chart/test_queue_registry.py; the chart cannot import Python).

Adding a queue is one entry here, a console script (`worker_main(name)`) and a values entry.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class QueueSpec:
    # The queue's name: `-Q` of its worker, the prefix of its task names ("counters.flush"),
    # the key of `queues.<name>` in the chart and the prefix of its env variables.
    name: str
    # Console script that runs this queue's worker (the chart's `queues.<name>.command`).
    command: str
    # Module whose import defines the Celery `app` and registers the queue's tasks.
    tasks_module: str
    # Defaults of the per-queue settings (seconds; messages reserved per worker process).
    soft_time_limit: int
    time_limit: int
    prefetch: int = 1

    @property
    def env_prefix(self) -> str:
        """`COUNTERS_` for `counters`: the prefix of this queue's env variables."""
        return self.name.upper().replace("-", "_") + "_"


# The registry. libs/core/tests/test_queue_added.py adds a `reports` entry the same way.
QUEUES: dict[str, QueueSpec] = {
    spec.name: spec
    for spec in (
        # Counter flush and recount tasks.
        QueueSpec(
            name="counters",
            command="celery-stack-worker-counters",
            tasks_module="celery_stack_counters.tasks",
            soft_time_limit=50,
            time_limit=60,
        ),
        # Domain scans requested through the API.
        QueueSpec(
            name="scans",
            command="celery-stack-worker-scans",
            tasks_module="celery_stack_scans.tasks",
            soft_time_limit=240,
            time_limit=300,
        ),
        # Outbox relay and the janitor's sweeps.
        QueueSpec(
            name="maintenance",
            command="celery-stack-worker-maintenance",
            tasks_module="celery_stack_janitor.tasks",
            soft_time_limit=240,
            time_limit=300,
        ),
    )
}


class UnknownQueue(KeyError):
    pass


def spec(name: str) -> QueueSpec:
    try:
        return QUEUES[name]
    except KeyError:
        raise UnknownQueue(f"queue {name!r} is not in the registry ({sorted(QUEUES)})") from None
