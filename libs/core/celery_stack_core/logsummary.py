"""Periodic tasks that found nothing to do log at DEBUG, with one summary line a minute.

At idle the flush, drain and relay tasks run every few seconds and each run logged two INFO
lines (received, succeeded): about 190 lines a minute that buried everything else. A run whose
result is empty (None, 0, {}, or a dict/list of only empty values) is a no-op: its lines go to
DEBUG, and a summary says how many ran. A run that does work logs as before, and so does every
failure. A beat-sent task's "received" line is DEBUG whatever the run then does: a prefork
worker logs "received" in its main process and the result in a child, so the main process can
never learn that the task's runs are no-ops (a local stack logged ~240 lines a minute at idle).
"""

from __future__ import annotations

import ast
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

SUMMARY_LOGGER = "celery_stack.periodic"
_SUCCEEDED = "celery.app.trace"
_RECEIVED = "celery.worker.strategy"
BEAT_TASK_ID_PREFIX = "beat:"  # celery_stack_beat.fencing.task_id


def _empty(value: Any) -> bool:
    if isinstance(value, dict):
        return all(_empty(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_empty(v) for v in value)
    return not value


def is_noop(return_repr: object) -> bool:
    """Whether a task's logged result (Celery logs its repr) says it did nothing."""
    try:
        return _empty(ast.literal_eval(str(return_repr)))
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return False


class QuietNoops(logging.Filter):
    """A handler filter: demotes no-op task lines and emits the per-minute summary."""

    def __init__(
        self,
        handler: logging.Handler,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.handler = handler
        self.interval = interval
        self.clock = clock
        self.quiet: set[str] = set()  # tasks whose last run was a no-op
        self.counts: Counter[str] = Counter()
        self.since = clock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == SUMMARY_LOGGER or record.levelno != logging.INFO:
            return True
        data = record.args if isinstance(record.args, dict) else {}
        name = str(data.get("name", ""))
        demote = False
        if record.name == _SUCCEEDED and "return_value" in data:
            demote = is_noop(data["return_value"])
            if demote:
                self.quiet.add(name)
                self.counts[name] += 1
            else:
                self.quiet.discard(name)
        elif record.name == _RECEIVED:
            demote = name in self.quiet or str(data.get("id", "")).startswith(BEAT_TASK_ID_PREFIX)
        self._maybe_summarize()
        if not demote:
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return logging.getLogger().isEnabledFor(logging.DEBUG)

    def _maybe_summarize(self) -> None:
        now = self.clock()
        if now - self.since < self.interval:
            return
        if self.counts:
            runs = ", ".join(f"{n} x{c}" for n, c in sorted(self.counts.items()))
            summary = logging.makeLogRecord(
                {
                    "name": SUMMARY_LOGGER,
                    "levelno": logging.INFO,
                    "levelname": "INFO",
                    "msg": f"periodic tasks with nothing to do in the last {now - self.since:.0f}s:"
                    f" {runs}",
                    "noops": dict(self.counts),
                }
            )
            self.counts.clear()
            self.handler.handle(summary)
        self.since = now


def install(handler: logging.Handler) -> None:
    handler.addFilter(QuietNoops(handler))
