"""A plain schedule runner: one process sends each entry when it is due.

Single instance only; the leader-elected, fenced runner replaces this (DESIGN "Beat").
"""

from __future__ import annotations

import logging
import math
import threading
import time

from celery import Celery

from celery_stack_beat.schedule import Entry

log = logging.getLogger(__name__)


def slot_id(entry: Entry, due: float) -> str:
    """Task id from entry + nominal due time: a duplicate send is visible downstream."""
    return f"beat:{entry.name}:{int(due * 1000)}"


def run(app: Celery, entries: list[Entry], *, tick: float, stop: threading.Event) -> None:
    now = time.time()
    # Align slots to multiples of the interval so restarts keep the same slot ids.
    next_due = {e.name: math.ceil(now / e.every) * e.every for e in entries}
    while not stop.is_set():
        now = time.time()
        for e in entries:
            due = next_due[e.name]
            if now < due:
                continue
            try:
                app.send_task(e.task, task_id=slot_id(e, due))
            except Exception:
                log.exception("could not send a due task", extra={"entry": e.name})
                continue
            # catch-up "skip": after a stall, jump to the next slot in the future.
            next_due[e.name] = max(due + e.every, math.floor(now / e.every) * e.every + e.every)
        stop.wait(tick)
