"""Test-only entrypoint: worker-scans whose step hook, on the first scan of a domain starting
with "hold.", takes a counters flush lease in the same process (as a worker that flushes and
scans would) and then hangs, so the test can kill -9 a process holding a lease and a running
scan. HOLD_MARK (a file) records the pid and makes the hook fire once."""

import asyncio
import os
import sys
from pathlib import Path

from celery_stack_core import connections
from celery_stack_core.config import get_settings
from celery_stack_core.hooks import HOOKS
from celery_stack_core.identity import owner_id
from celery_stack_core.locks import Lease

MARK = Path(os.environ["HOLD_MARK"])


async def hold(step: str, domain: str) -> None:
    if step != "claimed" or not domain.startswith("hold.") or MARK.exists():
        return
    lease = Lease(connections.redis(), "flush:post:views:0", owner_id(get_settings()), ttl=60)
    assert await lease.acquire()
    MARK.write_text(str(os.getpid()))
    await asyncio.sleep(3600)


HOOKS.install("scans", hold)

from celery_stack_scans.cli import main  # noqa: E402

main(sys.argv[1:])
