"""Retry with exponential backoff and full jitter, for transient connection errors only."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis.exceptions
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

T = TypeVar("T")
log = logging.getLogger(__name__)

TRANSIENT: tuple[type[BaseException], ...] = (
    ConnectionError,
    OSError,
    TimeoutError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
    OperationalError,
    InterfaceError,
)


# Deadlock and serialization failure: PostgreSQL rolled the transaction back; run it again.
RETRYABLE_SQLSTATES = {"40P01", "40001"}


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        if getattr(exc.orig, "sqlstate", None) in RETRYABLE_SQLSTATES:
            return True
    return isinstance(exc, TRANSIENT)


async def with_retry(
    op: Callable[[], Awaitable[T]],
    *,
    what: str,
    attempts: int = 5,
    base: float = 0.1,
    cap: float = 3.0,
) -> T:
    """Run `op` again after a transient error; `op` must be safe to repeat (idempotent)."""
    for attempt in range(1, attempts + 1):
        try:
            return await op()
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            delay = random.uniform(0, min(cap, base * 2**attempt))
            log.warning(
                "transient error, retrying",
                extra={
                    "what": what,
                    "attempt": attempt,
                    "delay": round(delay, 3),
                    "error": repr(exc),
                },
            )
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")
