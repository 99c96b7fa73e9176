"""Celery's generic metrics (celery-exporter's names), collected in-process.

    publisher (api, beat, relay)   after_task_publish -> celery_task_sent_total (+ sent_at header)
    worker main process            task_received / task_rejected / task_revoked
    worker child process           task_prerun / postrun / success / failure / retry
    worker, at scrape time         celery_queue_length, unacked per queue, worker up / consuming

Signals cost a few microseconds per task in the process that runs it; consuming task events
costs the worker three extra broker publishes per task plus an exporter process
(bench/bench_metrics.py measures both). Labels stay bounded: unknown task names and queues
collapse to "other".
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Iterator
from typing import Any

import redis
from celery import signals
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from celery_stack_core import liveness, metrics
from celery_stack_core.celery_app import UnroutedTask, queue_of
from celery_stack_core.queues import QUEUES

log = logging.getLogger(__name__)

SENT_AT = "celery_stack_sent_at"  # message header: publish time (unix seconds)
OTHER = "other"
MAX_NAMES = 500
_HOST = socket.gethostname()
_queues: set[str] = set(QUEUES)
_names: dict[str, str] = {}  # task name -> its label, at most MAX_NAMES of them
_started: dict[str, tuple[float, str, str]] = {}  # task id -> (monotonic start, name, queue)


def _name(name: str | None) -> str:
    """The task name if it routes to one of our queues, else "other"; past MAX_NAMES distinct
    names every new one is "other" too. Routing checks only the prefix (`scans.*`), and a name can
    come from a message header (task_rejected), so the cap is what bounds the label."""
    if not name:
        return OTHER
    label = _names.get(name)
    if label is None:
        try:
            queue_of(name)
            label = name if len(_names) < MAX_NAMES else OTHER
        except UnroutedTask:
            label = OTHER
        if len(_names) < MAX_NAMES:
            _names[name] = label
    return label


def _queue(queue: str | None) -> str:
    return queue if queue in _queues else OTHER


def _queue_of_request(request: Any) -> str:
    info = getattr(request, "delivery_info", None) or {}
    return _queue(info.get("routing_key") or info.get("queue"))


# --- publisher ----------------------------------------------------------------------------------
def _before_publish(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None:
        headers.setdefault(SENT_AT, time.time())


def _after_publish(
    sender: str | None = None,
    headers: dict[str, Any] | None = None,
    routing_key: str = "",
    **_: Any,
) -> None:
    task = (headers or {}).get("task", sender)
    metrics.TASK_SENT.labels(_name(task), _queue(routing_key), _HOST).inc()


# --- worker main process ------------------------------------------------------------------------
def _received(request: Any = None, **_: Any) -> None:
    metrics.TASK_RECEIVED.labels(_name(request.name), _queue_of_request(request), _HOST).inc()


def _rejected(message: Any = None, **_: Any) -> None:
    headers = getattr(message, "headers", None) or {}
    info = getattr(message, "delivery_info", None) or {}
    name, queue = _name(headers.get("task")), _queue(info.get("routing_key"))
    metrics.TASK_REJECTED.labels(name, queue, _HOST).inc()


def _revoked(request: Any = None, **_: Any) -> None:
    name = _name(getattr(request, "name", None) or getattr(request, "task", None))
    metrics.TASK_REVOKED.labels(name, _queue_of_request(request), _HOST).inc()


# --- worker child process -----------------------------------------------------------------------
def _prerun(task_id: str = "", task: Any = None, **_: Any) -> None:
    name, queue = _name(task.name), _queue_of_request(task.request)
    _started[task_id] = (time.monotonic(), name, queue)
    metrics.TASK_STARTED.labels(name, queue, _HOST).inc()
    metrics.TASKS_ACTIVE.labels(_HOST, queue).inc()
    sent_at = getattr(task.request, SENT_AT, None)
    if isinstance(sent_at, int | float):
        metrics.TASK_QUEUE_WAIT.labels(name, queue).observe(max(0.0, time.time() - sent_at))


def _postrun(task_id: str = "", **_: Any) -> None:
    started = _started.pop(task_id, None)
    if started is None:
        return
    t0, name, queue = started
    metrics.TASK_RUNTIME.labels(name, queue).observe(time.monotonic() - t0)
    metrics.TASKS_ACTIVE.labels(_HOST, queue).dec()


def _succeeded(sender: Any = None, **_: Any) -> None:
    metrics.TASK_SUCCEEDED.labels(
        _name(sender.name), _queue_of_request(sender.request), _HOST
    ).inc()


def _failed(sender: Any = None, exception: BaseException | None = None, **_: Any) -> None:
    name, queue = _name(sender.name), _queue_of_request(sender.request)
    exc = type(exception).__name__ if exception is not None else OTHER
    metrics.TASK_FAILED.labels(name, queue, _HOST, exc).inc()
    metrics.TASK_FAILURES.labels(sender.name).inc()


def _retried(sender: Any = None, request: Any = None, **_: Any) -> None:
    metrics.TASK_RETRIED.labels(_name(sender.name), _queue_of_request(request), _HOST).inc()


def note_queues(names: list[str]) -> None:
    """Queues a worker consumes besides the registry's (`<NAME>_QUEUES`): labels as they are."""
    _queues.update(names)


def install_publisher() -> None:
    """celery_task_sent_total and the publish-time header, for any process that sends tasks."""
    signals.before_task_publish.connect(_before_publish, weak=False)
    signals.after_task_publish.connect(_after_publish, weak=False)


def install_worker() -> None:
    install_publisher()
    for signal, handler in (
        (signals.task_received, _received),
        (signals.task_rejected, _rejected),
        (signals.task_revoked, _revoked),
        (signals.task_prerun, _prerun),
        (signals.task_postrun, _postrun),
        (signals.task_success, _succeeded),
        (signals.task_failure, _failed),
        (signals.task_retry, _retried),
    ):
        signal.connect(handler, weak=False)


# --- scrape time --------------------------------------------------------------------------------
def priority_lists(queue: str, transport_options: dict[str, Any]) -> list[str]:
    """The Redis lists kombu keeps for one queue: the queue itself and one per priority step."""
    steps = transport_options.get("priority_steps", [0, 3, 6, 9])
    sep = transport_options.get("sep", "\x06\x16")
    return [queue if step == 0 else f"{queue}{sep}{step}" for step in steps]


class BrokerCollector(Collector):
    """celery_queue_length (priority lists included) and unacked messages for `queues`, read
    from the broker when scraped; worker up and consuming from this worker's heartbeat."""

    UNACKED_SCAN_CAP = 10_000  # entries: a scrape stays cheap even with a runaway unacked hash

    def __init__(
        self,
        client: redis.Redis,
        queues: list[str],
        transport_options: dict[str, Any],
        *,
        heartbeat_file: str,
        fresh_within: float,
    ) -> None:
        self.client = client
        self.queues = queues
        self.options = transport_options
        self.heartbeat_file = heartbeat_file
        self.fresh_within = fresh_within

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            metrics.WORKER_UP_NAME, "1: this worker process runs.", None, ["hostname"]
        )
        up.add_metric([_HOST], 1)
        yield up
        consuming = GaugeMetricFamily(
            metrics.WORKER_CONSUMING_NAME,
            "1 while this worker consumes its queue: connected, consuming, broker answering.",
            labels=["hostname", "queue_name"],
        )
        fresh = liveness.heartbeat_age(self.heartbeat_file) <= self.fresh_within
        for queue in self.queues:
            consuming.add_metric([_HOST, queue], 1 if fresh else 0)
        yield consuming
        try:
            yield from self._broker()
        except redis.RedisError as exc:
            log.warning(
                "broker unreachable at scrape; queue metrics left out", extra={"error": repr(exc)}
            )

    def _broker(self) -> Iterator[Metric]:
        length = GaugeMetricFamily(
            metrics.QUEUE_LENGTH_NAME,
            "Messages waiting in the queue's Redis lists (all priorities).",
            labels=["queue_name"],
        )
        pipe = self.client.pipeline(transaction=False)
        for queue in self.queues:
            for name in priority_lists(queue, self.options):
                pipe.llen(name)
        counts = pipe.execute()
        per = len(counts) // max(1, len(self.queues))
        for i, queue in enumerate(self.queues):
            length.add_metric([queue], sum(counts[i * per : (i + 1) * per]))
        yield length
        unacked = GaugeMetricFamily(
            metrics.UNACKED_NAME,
            "Messages delivered to a worker and not yet acknowledged, by queue (kombu's "
            "unacked hash).",
            labels=["queue_name"],
        )
        for queue, n in self._unacked().items():
            unacked.add_metric([queue], n)
        yield unacked

    def _unacked(self) -> dict[str, int]:
        counts = dict.fromkeys(self.queues, 0)
        key = self.options.get("unacked_key", "unacked")
        for i, (_, raw) in enumerate(self.client.hscan_iter(key, count=500)):
            if i >= self.UNACKED_SCAN_CAP:
                break
            try:
                routing_key = json.loads(raw)[-1]  # [message, exchange, routing_key]
            except (ValueError, IndexError, TypeError):
                continue
            if routing_key in counts:
                counts[routing_key] += 1
        return counts
