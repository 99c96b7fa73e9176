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
    return _runner.run(coro)
