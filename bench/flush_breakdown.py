"""Where a flush spends its time, measured from the outside (flush.py is not touched).

Every Redis command of the client and every SQL statement and COMMIT of the engine is timed
and put in a category; "Python" is the wall time during which no Redis or SQL call was pending
(the union of the timed intervals is subtracted, so overlapping calls, as in a flush of several
shards at once, are not counted twice). The categories themselves overlap (the reader runs
beside the transactions, the two transactions beside each other), so their shares of the wall
time can add up to more than 100%. Categories:

- redis claim+ack: the claim and ack Lua scripts; redis read: the in-flight read (HSCAN Lua);
- lease: the lease's acquire / renew / release scripts; redis other: anything else (HLEN gauge);
  a pipeline counts as one call, in the category of its first command;
- UPDATE: a batch's statement, its ledger insert and `UPDATE ... FROM unnest` in one (the first
  also opens the transaction); ledger: the UPDATE of the ledger rows' figures; commit: COMMIT.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import event
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_connection

from bench.common import table

CATEGORIES = (
    "redis_claim_ack",
    "redis_read",
    "lease",
    "redis_other",
    "ledger",
    "update",
    "commit",
    "sql_other",
)


def _script_categories() -> dict[str, str]:
    """SHA1 of every Lua script the flush path loads -> its category."""
    import celery_stack_core
    import celery_stack_counters

    out: dict[str, str] = {}
    for pkg, names in (
        (
            celery_stack_counters,
            {"claim": "redis_claim_ack", "ack": "redis_claim_ack", "read_inflight": "redis_read"},
        ),
        (
            celery_stack_core,
            {"lock_acquire": "lease", "lock_renew": "lease", "lock_release": "lease"},
        ),
    ):
        for name, category in names.items():
            path = Path(pkg.__file__).parent / f"{name}.lua"
            if path.exists():
                out[hashlib.sha1(path.read_bytes()).hexdigest()] = category
    return out


class Breakdown:
    def __init__(self, redis: Any, engine: Any) -> None:
        self.redis, self.engine = redis, engine
        self.intervals: list[tuple[float, float, str]] = []
        self.scripts = _script_categories()
        self._sql_started: dict[int, float] = {}

    # --- Redis --------------------------------------------------------------------------------
    def _redis_category(self, args: tuple[Any, ...]) -> str:
        command = str(args[0]).upper() if args else ""
        if command in ("EVALSHA", "EVAL") and len(args) > 1:
            return self.scripts.get(str(args[1]), "redis_other")
        return "redis_other"

    def _wrap_redis(self) -> None:
        original = self.redis.execute_command

        async def timed(*args: Any, **options: Any) -> Any:
            started = time.perf_counter()
            try:
                return await original(*args, **options)
            finally:
                self.intervals.append((started, time.perf_counter(), self._redis_category(args)))

        self.redis.execute_command = timed
        pipeline = self.redis.pipeline
        outer = self

        def timed_pipeline(*args: Any, **options: Any) -> Any:
            pipe = pipeline(*args, **options)
            execute = pipe.execute

            async def timed_execute(*a: Any, **kw: Any) -> Any:
                stack = pipe.command_stack
                category = outer._redis_category(stack[0][0]) if stack else "redis_other"
                started = time.perf_counter()
                try:
                    return await execute(*a, **kw)
                finally:
                    outer.intervals.append((started, time.perf_counter(), category))

            pipe.execute = timed_execute
            return pipe

        self.redis.pipeline = timed_pipeline

    # --- SQL ----------------------------------------------------------------------------------
    def _before(self, conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        self._sql_started[id(cursor)] = time.perf_counter()

    def _after(self, conn: Any, cursor: Any, statement: str, *_: Any) -> None:
        started = self._sql_started.pop(id(cursor), None)
        if started is None:
            return
        s = " ".join(statement.split()).lower()
        if s.startswith("with ") and "(update " in s:
            category = "update"  # a batch's ledger insert + UPDATE, one statement
        elif "counter_batches" in s:
            category = "ledger"
        elif s.startswith("update"):
            category = "update"
        else:
            category = "sql_other"
        self.intervals.append((started, time.perf_counter(), category))

    def __enter__(self) -> Breakdown:
        self._wrap_redis()
        sync = self.engine.sync_engine
        event.listen(sync, "before_cursor_execute", self._before)
        event.listen(sync, "after_cursor_execute", self._after)
        self._commit = AsyncAdapt_asyncpg_connection.commit
        outer = self

        def commit(conn: Any) -> Any:
            started = time.perf_counter()
            try:
                return outer._commit(conn)
            finally:
                outer.intervals.append((started, time.perf_counter(), "commit"))

        AsyncAdapt_asyncpg_connection.commit = commit  # type: ignore[method-assign]
        self.started = time.perf_counter()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.wall = time.perf_counter() - self.started
        AsyncAdapt_asyncpg_connection.commit = self._commit  # type: ignore[method-assign]
        sync = self.engine.sync_engine
        event.remove(sync, "before_cursor_execute", self._before)
        event.remove(sync, "after_cursor_execute", self._after)
        del self.redis.execute_command
        del self.redis.pipeline

    # --- results ------------------------------------------------------------------------------
    def figures(self) -> dict[str, float]:
        out = {c: 0.0 for c in CATEGORIES}
        for start, end, category in self.intervals:
            out[category] += end - start
        busy = 0.0
        edge = float("-inf")
        for start, end, _ in sorted(self.intervals):
            if end > edge:
                busy += end - max(start, edge)
                edge = end
        out["python"] = max(0.0, self.wall - busy)
        out["wall"] = self.wall
        return out

    def table(self, title: str) -> str:
        f = self.figures()
        return table(
            title,
            ["where", "seconds", "share of wall"],
            [[k, f[k], f"{f[k] / f['wall']:.0%}"] for k in (*CATEGORIES, "python", "wall")],
        )
