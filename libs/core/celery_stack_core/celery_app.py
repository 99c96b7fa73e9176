"""The Celery app factory: one configuration for every service (DESIGN "Operating contract").

Tasks are routed by the prefix of their name (`counters.flush` -> queue `counters`), so a
producer needs only the name, never the code: the API and beat `send_task` by name. The queues,
their prefixes and time limits come from the queue registry (queues.py) and its settings.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from kombu.entity import Queue as KombuQueue

from celery_stack_core.config import Settings
from celery_stack_core.queues import QUEUES


class UnroutedTask(ValueError):
    pass


def queue_of(task_name: str) -> str:
    prefix = task_name.split(".", 1)[0]
    if prefix in QUEUES:
        return prefix
    # A message for a queue nobody consumes is a silent loss: refuse it at the producer.
    raise UnroutedTask(
        f"task {task_name!r} has no queue: its name must start with one of {sorted(QUEUES)}"
    )


def route(
    name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any
) -> dict[str, str]:
    return {"queue": queue_of(name)}


class QueueLimits:
    """Celery annotation: soft and hard time limits per queue, from the queue's settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def annotate(self, task: Any) -> dict[str, int] | None:
        try:
            queue = queue_of(task.name)
        except UnroutedTask:
            return None  # celery's own tasks (celery.chord_unlock, ...)
        limits = self.settings.queue(queue)
        return {"soft_time_limit": limits.soft_time_limit, "time_limit": limits.time_limit}


def celery_config(settings: Settings) -> dict[str, Any]:
    return {
        "broker_url": settings.broker_url,
        "result_backend": settings.result_backend,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        "timezone": "UTC",
        "enable_utc": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # The default for other apps; our workers get their queue's prefetch (worker_argv).
        "worker_prefetch_multiplier": 1,
        "task_queues": [KombuQueue(q, routing_key=q) for q in QUEUES],
        "task_routes": (route,),
        "task_annotations": (QueueLimits(settings),),
        # Nobody reads most results: tasks that need one opt in with ignore_result=False.
        "task_ignore_result": True,
        "result_expires": settings.celery.result_expires,
        "result_backend_transport_options": {"global_keyprefix": ""},
        "broker_transport_options": {
            "visibility_timeout": settings.celery.visibility_timeout,
            "socket_timeout": 5,
            "socket_connect_timeout": 5,
            # Look for messages of dead workers (unacked past visibility_timeout) every 10 s;
            # kombu's default throttle makes that ~100 s, so a kill -9'd task waited longer.
            "unacked_restore_interval": 10,
            "unacked_restore_throttle": 1,
            # No health_check_interval: its PING interleaves with the consumer's BRPOP replies
            # and crashes the worker (seen in tests/e2e/test_counters_stack.py).
        },
        "result_backend_always_retry": True,
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_soft_shutdown_timeout": settings.celery.soft_shutdown_timeout,
        "worker_enable_soft_shutdown_on_idle": True,
        "worker_hijack_root_logger": False,
        # Task events only for a consumer of them (Flower): our metrics come from signals.
        "worker_send_task_events": settings.celery.task_events,
        "task_send_sent_event": settings.celery.task_events,
    }


def make_celery(settings: Settings, main: str = "celery_stack") -> Celery:
    # Every task's base class makes a beat-sent task run once per slot (celery_stack_core.once).
    app = Celery(main, set_as_current=False, task_cls="celery_stack_core.once:OnceTask")
    app.conf.update(celery_config(settings))
    return app
