"""Tell "a store is unreachable" (retry later: 503) from every other error (a bug or bad data).

Only connection-class failures count: refused, reset or timed-out sockets, PostgreSQL
connection exceptions (SQLSTATE class 08), a server starting up (57P03 CannotConnectNow),
shutting down (57P01 admin shutdown, 57P02 crash shutdown), out of connection slots (53300) or
past its statement timeout (57014),
a connection SQLAlchemy invalidated, a pool timeout, and Redis connection errors. A data error
(a NUL in text, a constraint) is never an outage.
"""

from __future__ import annotations

import redis.exceptions
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeout

_OUTAGE_TYPES: tuple[type[BaseException], ...] = (
    OSError,  # ConnectionRefusedError, ConnectionResetError, TimeoutError, socket.gaierror
    DisconnectionError,
    PoolTimeout,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    redis.exceptions.BusyLoadingError,
)
_OUTAGE_SQLSTATES = {"57P01", "57P02", "57P03", "53300", "57014"}
_MAX_DEPTH = 8  # exception chains are short; a cycle must not loop forever


def _one(exc: BaseException) -> bool:
    if isinstance(exc, _OUTAGE_TYPES):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    state = getattr(exc, "sqlstate", None)
    return isinstance(state, str) and (state.startswith("08") or state in _OUTAGE_SQLSTATES)


def is_outage(exc: BaseException) -> bool:
    """Whether `exc`, or what it wraps (DBAPIError.orig, __cause__), is a connection failure."""
    seen: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo and len(seen) < _MAX_DEPTH:
        cur = todo.pop()
        if any(cur is s for s in seen):
            continue
        if _one(cur):
            return True
        seen.append(cur)
        todo.extend(
            e for e in (getattr(cur, "orig", None), cur.__cause__) if isinstance(e, BaseException)
        )
    return False
