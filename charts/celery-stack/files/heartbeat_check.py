"""Worker startup/liveness probe: is the consuming-heartbeat file fresh?

The worker touches WORKER_HEARTBEAT_FILE only while its consumer runs and the broker answers a
ping (celery_stack_core.liveness), so a fresh file means "connected and consuming". Unlike
`celery inspect ping` it costs no broker round trip and catches the worker that answers pings
but consumes nothing after a Redis restart.
Usage: python heartbeat_check.py MAX_AGE_SECONDS  (exit 0 = fresh)
"""

from __future__ import annotations

import os
import sys
import time

DEFAULT_FILE = "/tmp/celery-stack-worker-alive"  # noqa: S108 - the pod's private emptyDir


def main(argv: list[str]) -> int:
    max_age = float(argv[0]) if argv else 60.0
    path = os.environ.get("WORKER_HEARTBEAT_FILE") or DEFAULT_FILE
    try:
        age = time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        print(f"no heartbeat file {path}: the worker is not consuming", file=sys.stderr)
        return 1
    if age > max_age:
        print(f"heartbeat {age:.0f}s old (max {max_age:g}s): the worker stopped consuming")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
