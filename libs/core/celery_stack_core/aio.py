"""One asyncio event loop per worker process, for Celery tasks that call async core code.

Celery's prefork children are plain processes; each gets its own loop (created lazily after
fork) so engines and Redis clients bound to it are reused across tasks instead of rebuilt.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")
_runner: asyncio.Runner | None = None
_pid = 0


def run(coro: Coroutine[Any, Any, T]) -> T:
    global _runner, _pid
    if _runner is None or _pid != os.getpid():
        _runner = asyncio.Runner()  # a forked child never reuses its parent's loop
        _pid = os.getpid()
    try:
        return _runner.run(coro)
    except BaseException:
        _cancel_leftover(_runner, coro)
        raise


def _cancel_leftover(runner: asyncio.Runner, coro: Coroutine[Any, Any, Any]) -> None:
    """An exception raised into the loop from outside (a signal handler: Celery's soft time
    limit) leaves `coro`'s task pending; it would resume inside the next run(). Cancel it and
    let it unwind (its finally blocks run) before the caller goes on."""
    loop = runner.get_loop()
    left = [t for t in asyncio.all_tasks(loop) if t.get_coro() is coro and not t.done()]
    for task in left:
        task.cancel()
    if left:
        loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
