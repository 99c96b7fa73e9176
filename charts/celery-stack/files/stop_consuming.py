"""Worker preStop hook: stop consuming before SIGTERM arrives (warm shutdown by design).

Asks this pod's worker node(s) - found by pinging and keeping the names that end in
`@<hostname>` - to cancel their consumers, so no new message is reserved while the pod is being
removed from the Deployment; running tasks go on and finish inside the grace period.
Usage: python stop_consuming.py QUEUE [QUEUE ...]   (exit 0 even if the worker is gone)
"""

from __future__ import annotations

import os
import socket
import sys

from celery import Celery


def main(queues: list[str]) -> int:
    broker = os.environ.get("CELERY_BROKER_URL") or os.environ.get("REDIS_URL")
    if not broker:
        print("no broker URL in the environment", file=sys.stderr)
        return 0
    host = socket.gethostname()
    app = Celery("celery-stack-prestop", broker=broker, set_as_current=False)
    try:
        replies = app.control.ping(timeout=2.0) or []
        nodes = [name for reply in replies for name in reply if name.endswith(f"@{host}")]
        for queue in queues:
            if nodes:
                app.control.cancel_consumer(queue, destination=nodes, reply=True, timeout=2.0)
        print(f"cancelled consumers {queues} on {nodes}", flush=True)
    except Exception as exc:  # a preStop hook must never block the shutdown it prepares
        print(f"could not cancel consumers: {exc!r}", file=sys.stderr)
    finally:
        app.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
