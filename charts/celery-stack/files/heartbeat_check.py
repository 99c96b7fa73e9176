"""Worker probes: is the liveness (or, with --consuming, the readiness) file fresh?

The worker keeps two files (celery_stack_core.liveness):
- WORKER_HEARTBEAT_FILE, for liveness: stale only when the worker is wedged (connected to a
  reachable broker yet consuming nothing, or its event loop blocked); a broker outage keeps it
  fresh, so an outage never restarts the fleet;
- WORKER_HEARTBEAT_FILE + ".consuming", for startup and readiness: fresh only while consuming.
Unlike `celery inspect ping` it costs no broker round trip and catches the worker that answers
pings but consumes nothing after a Redis restart.
Usage: python heartbeat_check.py [--consuming] MAX_AGE_SECONDS  (exit 0 = fresh)
"""

from __future__ import annotations

import os
import sys
import time

DEFAULT_FILE = "/tmp/celery-stack-worker-alive"  # noqa: S108 - the pod's private emptyDir


def main(argv: list[str]) -> int:
    consuming = "--consuming" in argv
    args = [a for a in argv if a != "--consuming"]
    max_age = float(args[0]) if args else 60.0
    path = os.environ.get("WORKER_HEARTBEAT_FILE") or DEFAULT_FILE
    if consuming:
        path += ".consuming"
    what = "consuming" if consuming else "alive (consuming, or waiting out a broker outage)"
    try:
        age = time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        print(f"no heartbeat file {path}: the worker has not been {what} yet", file=sys.stderr)
        return 1
    if age > max_age:
        print(f"heartbeat {path} {age:.0f}s old (max {max_age:g}s): the worker stopped consuming")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
