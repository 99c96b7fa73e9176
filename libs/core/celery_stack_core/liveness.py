"""Worker liveness and readiness files (DESIGN "The chart": liveness means "not wedged").

    event loop tick --(consuming?)--> last_consuming
    watchdog thread: consuming recently     -> touch ALIVE and CONSUMING
                     else broker unreachable -> touch ALIVE only   (an outage is not a wedge)
                     else                    -> touch nothing      (wedged: goes stale)

- ALIVE (`WORKER_HEARTBEAT_FILE`) backs the liveness probe. It goes stale only when the worker
  is wedged: connected to a reachable broker yet consuming nothing (the kombu hang after a Redis
  restart: no BRPOP sent any more although the prefetch limit allows one; a cancelled consumer)
  or its event loop blocked. A broker outage keeps it fresh:
  restarting every worker of the fleet during one helps nothing, and the consumer reconnects by
  itself once Redis is back.
- CONSUMING (`<WORKER_HEARTBEAT_FILE>.consuming`) backs the startup and readiness probes: fresh
  only while the consumer actually consumes, so readiness drops during an outage.

The tick runs on the consumer's own timer, in the event loop that polls Redis, so a blocked loop
stops it whatever the pool. The watchdog is a thread of the worker's main process, so it keeps
running while Celery's consumer is stopped and reconnecting, and it checks the broker on a
connection of its own (never the consumer's, which is blocked in BRPOP).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

from celery import Celery, bootsteps
from kombu.exceptions import OperationalError

log = logging.getLogger(__name__)

CONSUMING_SUFFIX = ".consuming"

# A prefork child forked while the watchdog is mid-check would inherit the locks the watchdog
# held at that instant (stderr's buffer while it logs, a connection's) and hang at its first use:
# a task received, never run. Forks wait for the check in progress; the child starts with the
# lock free (it is held by the forking thread, which is the child's only thread).
_checking = threading.Lock()
os.register_at_fork(
    before=_checking.acquire,
    after_in_parent=_checking.release,
    after_in_child=_checking.release,
)


def consuming_file(alive_file: str) -> str:
    """The readiness file that sits beside the liveness file."""
    return alive_file + CONSUMING_SUFFIX


def heartbeat_age(path: str) -> float:
    """Seconds since the file was last touched (inf when it never was)."""
    try:
        return time.time() - Path(path).stat().st_mtime
    except FileNotFoundError:
        return float("inf")


class _State:
    """What the event loop tells the watchdog: when it last saw the consumer consuming."""

    def __init__(self) -> None:
        self.last_consuming = float("-inf")


# A BRPOP is re-sent after every reply and every brpop_timeout (1 s) while the consumer polls;
# none for this long past that timeout means the loop stopped polling.
POLL_GRACE_SECONDS = 5.0


def _consuming(c: Any) -> bool:
    conn = c.connection
    if conn is None or not conn.connected or c.task_consumer is None:
        return False
    if not c.task_consumer.queues:  # connected but consuming from nothing is a wedge
        return False
    return _polling(c.task_consumer.channel)


def _polling(channel: Any) -> bool:
    """Whether the Redis channel still asks for messages: the kombu hang after a Redis restart
    leaves the connection up, the consumer's queues set and the loop ticking (pings answered),
    but no BRPOP is ever sent again. A channel at its prefetch limit sends none by design (its
    worker is busy, not wedged). Transports without kombu's BRPOP bookkeeping (kombu < 5.7's
    `_brpop_sent_at`, or not Redis) are judged by the checks above only."""
    qos = getattr(channel, "qos", None)
    if qos is not None and not qos.can_consume():
        return True
    if not hasattr(channel, "_brpop_sent_at"):
        return True
    sent = channel._brpop_sent_at
    if sent is None:  # none sent yet on this connection
        return False
    return time.monotonic() - sent < channel.brpop_timeout + POLL_GRACE_SECONDS


class ConsumingTick(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer step: on every tick of the consumer's event loop, record whether it consumes."""

    requires = {"celery.worker.consumer.tasks:Tasks"}

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None

    def start(self, c: Any) -> None:
        conf = c.app.conf
        state: _State = conf.celery_stack_liveness_state
        self._tick(c, state)
        self.tref = c.timer.call_repeatedly(
            conf.celery_stack_heartbeat_interval, self._tick, (c, state)
        )

    def stop(self, c: Any) -> None:
        # The consumer stops on connection loss: no tick means "not consuming"; the files stay
        # (the watchdog decides), so a broker outage never removes the liveness file.
        if self.tref is not None:
            self.tref.cancel()
            self.tref = None

    def _tick(self, c: Any, state: _State) -> None:
        if _consuming(c):
            state.last_consuming = time.monotonic()


class Watchdog(bootsteps.StartStopStep):  # type: ignore[misc]
    """Worker step: the thread that touches the files (see the module docstring)."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self, w: Any) -> None:
        conf = w.app.conf
        self.app: Celery = w.app
        self.state: _State = conf.celery_stack_liveness_state
        self.interval: float = conf.celery_stack_heartbeat_interval
        self.alive = Path(conf.celery_stack_heartbeat_file)
        self.consuming = Path(consuming_file(conf.celery_stack_heartbeat_file))
        # A restarted container finds the previous one's files in the pod's emptyDir: they must
        # not pass its startup probe before this process consumes.
        for path in (self.alive, self.consuming):
            path.unlink(missing_ok=True)
        self.thread = threading.Thread(target=self._run, name="liveness-watchdog", daemon=True)
        self.thread.start()

    def stop(self, w: Any) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(timeout=5)

    def _run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                self.check()
            except Exception:  # a dead watchdog would fail liveness for good: log, go on
                log.exception("liveness watchdog check failed; retried next interval")

    def check(self) -> None:
        # two missed ticks and the loop is not consuming any more
        window = 2 * self.interval + 1
        with _checking:
            if time.monotonic() - self.state.last_consuming < window:
                self.alive.touch()
                self.consuming.touch()
            elif not self._broker_reachable():
                self.alive.touch()

    def _broker_reachable(self) -> bool:
        conn = self.app.connection_for_write(connect_timeout=2)
        try:
            conn.ensure_connection(max_retries=1, timeout=2)
            conn.default_channel.client.ping()
        except (OperationalError, *conn.connection_errors, *conn.channel_errors) as exc:
            log.warning(
                "broker unreachable: an outage, not a wedge; liveness kept, readiness dropped",
                extra={"error": repr(exc)},
            )
            return False
        finally:
            conn.release()
        log.warning(
            "broker reachable but the worker consumes nothing: liveness heartbeat not touched"
        )
        return True


def install(app: Celery, path: str, interval: float) -> None:
    app.conf.celery_stack_heartbeat_file = path
    app.conf.celery_stack_heartbeat_interval = interval
    app.conf.celery_stack_liveness_state = _State()
    app.steps["consumer"].add(ConsumingTick)
    app.steps["worker"].add(Watchdog)
