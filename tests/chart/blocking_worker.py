"""A Celery worker with the product's liveness steps (celery_stack_core.liveness) and two extra
remote control commands that wedge it from outside: one blocks its event loop; the other stops
it polling Redis the way the known kombu hang after a Redis restart did (the transport's poll
start dropped from the loop's tick callbacks: connection up, queues set, pings still answered,
no BRPOP ever sent again). test_scripts.py runs the chart's rendered liveness probe against it.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery
from celery.worker.control import control_command

from celery_stack_core import liveness

app = Celery("blocking-worker", broker=os.environ["REDIS_URL"], set_as_current=False)
liveness.install(
    app, os.environ["WORKER_HEARTBEAT_FILE"], float(os.environ["WORKER_HEARTBEAT_INTERVAL"])
)


@control_command(args=[("seconds", float)], signature="<seconds>")  # type: ignore[untyped-decorator]
def block_loop(state: Any, seconds: float = 30.0) -> dict[str, str]:
    time.sleep(seconds)  # runs in the consumer's event loop: nothing else of the loop runs
    return {"ok": "unblocked"}


@control_command()  # type: ignore[untyped-decorator]
def stall_polling(state: Any) -> dict[str, int]:
    hub = state.consumer.hub
    dropped = [
        cb
        for cb in list(hub.on_tick)
        if getattr(cb, "__qualname__", "").endswith(
            "register_with_event_loop.<locals>.on_poll_start"
        )
    ]
    for cb in dropped:
        hub.on_tick.discard(cb)
    return {"dropped": len(dropped)}
