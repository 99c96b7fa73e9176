"""A Celery worker with the product's liveness steps (celery_stack_core.liveness) and one extra
remote control command that blocks its event loop, the way a wedged loop does: the only way to
block a real worker's loop from outside. test_scripts.py runs the chart's rendered liveness probe
against it.
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
