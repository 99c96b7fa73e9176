"""Child process of bench/bench_metrics.py (its own process: prometheus_client reads
PROMETHEUS_MULTIPROC_DIR at import). Prints one JSON line.

    python -m bench.metrics_probe signals N [--bare]   signal dispatch for N tasks, with our
                                                       handlers or (--bare) none connected
    python -m bench.metrics_probe events N             publish the 4 task events of N tasks
    python -m bench.metrics_probe consume N            an exporter: receive 4*N events, count
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from types import SimpleNamespace
from typing import Any

from celery import signals

from celery_stack_core.celery_app import make_celery
from celery_stack_core.config import get_settings

TASK = "scans.run"
QUEUE = "scans"


class _Task:
    """What the handlers read of a task (signal senders must be hashable)."""

    name = TASK

    def __init__(self) -> None:
        self.request = SimpleNamespace(
            delivery_info={"routing_key": QUEUE}, celery_stack_sent_at=time.time(), name=TASK
        )


def _task() -> Any:
    return _Task()


def signals_per_task(n: int, *, bare: bool) -> dict[str, float]:
    """What a task's life sends through Celery's signals in producer and worker processes."""
    if not bare:
        from celery_stack_core import celery_metrics

        celery_metrics.install_worker()
    task = _task()
    headers: dict[str, Any] = {"task": TASK, "id": "x"}
    t0 = time.perf_counter()
    for i in range(n):
        tid = str(i)
        headers.pop("celery_stack_sent_at", None)
        signals.before_task_publish.send(sender=TASK, headers=headers, routing_key=QUEUE)
        signals.after_task_publish.send(sender=TASK, headers=headers, routing_key=QUEUE)
        signals.task_received.send(sender=None, request=task.request)
        signals.task_prerun.send(sender=task, task_id=tid, task=task)
        signals.task_success.send(sender=task, result=None)
        signals.task_postrun.send(sender=task, task_id=tid, task=task, state="SUCCESS")
    elapsed = time.perf_counter() - t0
    return {"us_per_task": elapsed / n * 1e6}


def _event_fields(tid: str) -> dict[str, Any]:
    return {"uuid": tid, "name": TASK, "args": "()", "kwargs": "{}", "routing_key": QUEUE}


def events_per_task(n: int) -> dict[str, float]:
    """task-sent (producer) + task-received/started/succeeded (worker), to the broker."""
    app = make_celery(get_settings())
    with app.connection_for_write() as conn:
        dispatcher = app.events.Dispatcher(conn, hostname="bench@probe", enabled=True)
        t0 = time.perf_counter()
        for _ in range(n):
            tid = str(uuid.uuid4())
            dispatcher.send("task-sent", **_event_fields(tid), queue=QUEUE)
            dispatcher.send("task-received", **_event_fields(tid))
            dispatcher.send("task-started", uuid=tid)
            dispatcher.send("task-succeeded", uuid=tid, result="None", runtime=0.001)
        elapsed = time.perf_counter() - t0
        dispatcher.close()
    return {"us_per_task": elapsed / n * 1e6}


class _Done(Exception):
    """Raised from the event handler to end capture() once every event arrived."""


def consume(n: int) -> dict[str, float]:
    """An exporter in the style of celery-exporter: receive events, update counters."""
    from prometheus_client import Counter, Histogram

    counts = Counter("bench_task_events", "Events.", ["type", "name", "hostname"])
    runtime = Histogram("bench_task_runtime", "Runtime.", ["name"])
    app = make_celery(get_settings())
    state = app.events.State()
    want, seen = 4 * n, 0
    started = None

    def on_event(event: dict[str, Any]) -> None:
        nonlocal seen, started
        if started is None:
            started = time.process_time()
        state.event(event)
        task = state.tasks.get(event.get("uuid", ""))
        name = getattr(task, "name", None) or "unknown"
        counts.labels(event["type"], name, event.get("hostname", "")).inc()
        if event["type"] == "task-succeeded":
            runtime.labels(name).observe(float(event.get("runtime", 0.0)))
        seen += 1
        if seen >= want:
            raise _Done

    with app.connection_for_read() as conn:
        recv = app.events.Receiver(conn, handlers={"*": on_event})
        print(json.dumps({"ready": True}), flush=True)
        try:
            recv.capture(limit=None, timeout=60, wakeup=True)
        except _Done:
            log_done = True  # every event arrived
        else:
            log_done = False
    if not log_done:
        raise SystemExit(f"only {seen} of {want} events arrived")
    cpu = time.process_time() - (started or time.process_time())
    return {"cpu_us_per_task": cpu / n * 1e6, "events": float(seen)}


def main(argv: list[str]) -> int:
    mode, n = argv[0], int(argv[1])
    if mode == "signals":
        out = signals_per_task(n, bare="--bare" in argv)
    elif mode == "events":
        out = events_per_task(n)
    elif mode == "consume":
        out = consume(n)
    else:
        raise SystemExit(f"unknown mode {mode}")
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
