"""The leader's tick loop: every due slot is claimed in Redis under the leader's epoch, then
sent with a task id derived from the entry and the slot's nominal due time.

Before every claim and again before every send, the local gate (Leadership.may_send) refuses
if the last successful renewal is older than the renew deadline: a leader that was paused
(SIGSTOP, a long GC, a frozen VM) sends nothing when it wakes, even before it learns that its
lease is gone; and the claim script refuses it anyway once a newer epoch exists.

A claimed slot stays pending in Redis until it was handed to the broker: at every tick (the
first one right after acquisition) the leader resends, with the same task id, the pending slots
a crash, a pause, the local gate or a broker error left unsent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from celery import Celery

from celery_stack_beat import clock, fencing, slots
from celery_stack_beat.election import Leadership
from celery_stack_beat.fencing import Claim
from celery_stack_beat.schedule import Entry
from celery_stack_core import keys, metrics
from celery_stack_core.config import Settings

log = logging.getLogger(__name__)

# A claimed slot left unsent (broker down, claimer crashed) is resent for this long after its
# claim, then given up.
SEND_RETRY_WINDOW_MS = 60_000
# ... but only once its claim is this old: its claimer is not still in the middle of sending it.
PENDING_GRACE_MS = 2_000


def slot_id(entry: Entry, due_ms: int) -> str:
    """Task id from entry + nominal due time: a duplicate send is visible downstream."""
    return fencing.task_id(entry.name, due_ms)


def send_slot(app: Celery, entry: Entry, due_ms: int, epoch: int) -> None:
    options: dict[str, Any] = {}
    if entry.soft_time_limit is not None:
        options["soft_time_limit"] = entry.soft_time_limit
    if entry.time_limit is not None:
        options["time_limit"] = entry.time_limit
    app.send_task(
        entry.task,
        task_id=slot_id(entry, due_ms),
        headers={"beat_epoch": epoch, "beat_due_ms": due_ms},
        **options,
    )


@dataclass
class Replica:
    """This process's view, for the status endpoint and the liveness heartbeat."""

    identity: str
    election: str
    heartbeat_file: str
    role: str = "standby"
    epoch: int = 0
    leader: dict[str, Any] | None = None
    leadership: Leadership | None = None
    progress_at: float = field(default_factory=clock.now)
    next_due: dict[str, int] = field(default_factory=dict)

    def progressed(self) -> None:
        """Leader: a tick completed. Standby: an election attempt completed."""
        self.progress_at = clock.now()
        try:
            Path(self.heartbeat_file).touch()
        except OSError as exc:  # a read-only fs without the emptyDir: say so, keep running
            log.warning("cannot touch the beat heartbeat file", extra={"error": repr(exc)})

    def progress_age(self) -> float:
        return clock.now() - self.progress_at

    def snapshot(self) -> dict[str, Any]:
        lead = self.leadership
        return {
            "identity": self.identity,
            "election": self.election,
            "role": self.role,
            "epoch": self.epoch,
            "leader": self.leader,
            "last_renewal_age": None if lead is None else round(lead.renewal_age(), 3),
            "may_send": bool(lead and lead.may_send()),
            "progress_age": round(self.progress_age(), 3),
            "next_due_ms": dict(self.next_due),
        }


@dataclass
class Ticker:
    redis: aioredis.Redis
    entries: list[Entry]
    leadership: Leadership
    replica: Replica
    settings: Settings
    send: Callable[[Entry, int, int], Awaitable[None]]
    pending_grace_ms: int = PENDING_GRACE_MS
    inflight: set[asyncio.Future[None]] = field(default_factory=set)
    # Set on shutdown: the loop ends after its current tick even if a cancellation is lost
    # (asyncio.wait_for in Python 3.11 can swallow one that races with its inner result).
    stopping: bool = False

    def _ttl_ms(self, entry: Entry) -> int:
        span = entry.every * 3 if entry.cron is None else 0
        return int(max(self.settings.beat.slot_ttl, span) * 1000)

    async def _claim(self, entry: Entry, due_ms: int, mode: str) -> Claim:
        got = await fencing.claim(
            self.redis,
            epoch=self.leadership.epoch,
            entry=entry.name,
            due_ms=due_ms,
            ttl_ms=self._ttl_ms(entry),
            holder=self.replica.identity,
            mode=mode,
        )
        if got is Claim.STALE:
            # A newer epoch exists: someone else leads. Stop at once; hold() ends the process.
            self.leadership.lost = True
            metrics.BEAT_SLOTS.labels(entry.name, "fenced").inc()
            log.error(
                "fenced: a newer epoch exists, this replica no longer leads",
                extra={"epoch": self.leadership.epoch, "entry": entry.name, "due_ms": due_ms},
            )
        return got

    async def _send_and_clear(self, entry: Entry, due_ms: int) -> None:
        await self.send(entry, due_ms, self.leadership.epoch)
        await fencing.sent(self.redis, entry.name, due_ms)

    async def _send(self, entry: Entry, due_ms: int) -> bool:
        if not self.leadership.may_send():
            return False
        # Shielded: a send that reached the broker is also cleared from pending even if the
        # tick is cancelled (SIGTERM), so the next leader does not send it again.
        fut = asyncio.ensure_future(self._send_and_clear(entry, due_ms))
        self.inflight.add(fut)
        fut.add_done_callback(self.inflight.discard)
        try:
            await asyncio.shield(fut)
        except Exception as exc:
            metrics.BEAT_SLOTS.labels(entry.name, "send_failed").inc()
            log.warning(
                "could not send a claimed slot; it stays pending and is retried",
                extra={"entry": entry.name, "due_ms": due_ms, "error": repr(exc)},
            )
            return False
        metrics.BEAT_SLOTS.labels(entry.name, "sent").inc()
        metrics.BEAT_SEND_LATENESS.labels(entry.name).observe(
            max(0.0, (clock.wall_ms() - due_ms) / 1000)
        )
        return True

    async def _resend_pending(self) -> bool:
        """Resend claimed slots nobody sent; False if this tick must stop (fenced, gate, error)."""
        if not self.leadership.may_send():
            return False
        got = await fencing.pending_due(
            self.redis,
            epoch=self.leadership.epoch,
            grace_ms=self.pending_grace_ms,
            window_ms=SEND_RETRY_WINDOW_MS,
        )
        if got is None:
            self.leadership.lost = True
            metrics.BEAT_SLOTS.labels("", "fenced").inc()
            log.error("fenced: a newer epoch exists", extra={"epoch": self.leadership.epoch})
            return False
        expired, due = got
        for tid in expired:
            name, due_ms = fencing.parse_task_id(tid) or (tid, 0)
            metrics.BEAT_SLOTS.labels(name, "missed").inc()
            log.error("gave up sending a claimed slot", extra={"entry": name, "due": due_ms})
        by_name = {e.name: e for e in self.entries}
        for tid in due:
            parsed = fencing.parse_task_id(tid)
            entry = by_name.get(parsed[0]) if parsed else None
            if parsed is None or entry is None:  # the entry left the schedule: nothing to run
                await self.redis.zrem(keys.BEAT_PENDING, tid)
                continue
            log.warning(
                "resending a claimed slot that was not sent",
                extra={"entry": entry.name, "due_ms": parsed[1], "task_id": tid},
            )
            if not await self._send(entry, parsed[1]):
                return False
            metrics.BEAT_SLOTS.labels(entry.name, "resent").inc()
        return True

    async def tick(self) -> None:
        if not await self._resend_pending():
            return
        now_ms = clock.wall_ms()
        last = await fencing.last_runs(self.redis)
        for entry in self.entries:
            if not self.leadership.may_send():
                return
            if entry.name not in last:
                start = slots.latest_at_or_before(entry, now_ms)
                if await self._claim(entry, start, "init") is Claim.STALE:
                    return
                last = await fencing.last_runs(self.redis)
            p = slots.plan(
                entry,
                last[entry.name],
                now_ms,
                skip_grace_ms=int(self.settings.beat.skip_grace * 1000),
                catchup_max=self.settings.beat.catchup_max,
            )
            newest = last[entry.name]
            final = p.send[-1] if p.send else p.skip
            for due_ms in [*p.send, *([p.skip] if p.skip is not None else [])]:
                sending = due_ms != p.skip
                got = await self._claim(entry, due_ms, "send" if sending else "skip")
                if got is Claim.STALE:
                    return
                if got is Claim.DUPLICATE:
                    metrics.BEAT_SLOTS.labels(entry.name, "skipped_duplicate").inc()
                    continue
                newest = max(newest, due_ms)
                metrics.BEAT_SLOTS.labels(entry.name, "claimed").inc()
                if due_ms == final:
                    # Counted once, by the replica whose claim moved last-run past them.
                    if p.missed:
                        metrics.BEAT_SLOTS.labels(entry.name, "missed").inc(p.missed)
                        log.info(
                            "slots missed by catch-up policy",
                            extra={"entry": entry.name, "policy": entry.catch_up, "n": p.missed},
                        )
                    if p.coalesced:
                        metrics.BEAT_SLOTS.labels(entry.name, "coalesced").inc(p.coalesced)
                sent = sending and await self._send(entry, due_ms)
                if sending and not sent and not self.leadership.may_send():
                    # Claimed but not sent: it stays pending, the next leader resends it.
                    log.warning(
                        "local gate: renewal too old, leaving a claimed slot pending",
                        extra={"entry": entry.name, "due_ms": due_ms},
                    )
                    return
            self.replica.next_due[entry.name] = slots.next_after(entry, max(newest, now_ms))

    async def run(self) -> None:
        """Tick until the leadership is lost (then return) or the task is cancelled."""
        tick = self.settings.beat.tick
        planned = clock.now()
        while not (self.leadership.lost or self.stopping):
            lag = max(0.0, clock.now() - planned)
            metrics.BEAT_TICK_LAG.set(lag)
            metrics.BEAT_RENEWAL_AGE.set(self.leadership.renewal_age())
            try:
                await self.tick()
            except Exception as exc:  # Redis or broker hiccup: the next tick tries again
                log.warning("beat tick failed", extra={"error": repr(exc)})
            else:
                # Only a completed tick is progress: a leader whose ticks all fail is not alive.
                self.replica.progressed()
                metrics.BEAT_LAST_TICK.set_to_current_time()
            if self.leadership.lost or self.stopping:
                return
            planned = max(planned + tick, clock.now())
            await asyncio.sleep(max(0.0, planned - clock.now()))
