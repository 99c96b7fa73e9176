"""Worker liveness: a file touched only while the worker is consuming (DESIGN "The chart").

`celery inspect ping` answers even from a worker that lost its broker connection and consumes
nothing after a Redis restart; a probe on this file's age does not. The step lives in the
consumer blueprint, which Celery stops on connection loss and restarts on reconnection, and
each touch also checks that the broker connection is up.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from celery import Celery, bootsteps

log = logging.getLogger(__name__)


def heartbeat_age(path: str) -> float:
    """Seconds since the worker last proved it consumes (inf when it never did)."""
    try:
        return time.time() - Path(path).stat().st_mtime
    except FileNotFoundError:
        return float("inf")


class ConsumingHeartbeat(bootsteps.StartStopStep):  # type: ignore[misc]
    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None

    def start(self, c: Any) -> None:
        conf = c.app.conf
        self.path = Path(conf.celery_stack_heartbeat_file)
        self._touch(c)
        self.tref = c.timer.call_repeatedly(conf.celery_stack_heartbeat_interval, self._touch, (c,))

    def stop(self, c: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    def _touch(self, c: Any) -> None:
        conn = c.connection
        if conn is None or not conn.connected or c.task_consumer is None:
            return
        if not c.task_consumer.queues:
            return  # connected but consuming from nothing
        try:
            # A connection of its own: the consumer's channel is blocked in BRPOP, and a PING on
            # it would interleave replies with the consumer's.
            with c.app.connection_for_write() as probe:
                probe.ensure_connection(max_retries=1, timeout=2)
                probe.default_channel.client.ping()
        except Exception as exc:
            log.warning(
                "broker ping failed; liveness heartbeat not touched", extra={"error": repr(exc)}
            )
            return
        self.path.touch()


def install(app: Celery, path: str, interval: float) -> None:
    app.conf.celery_stack_heartbeat_file = path
    app.conf.celery_stack_heartbeat_interval = interval
    app.steps["consumer"].add(ConsumingHeartbeat)
