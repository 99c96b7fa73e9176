"""The leader's tick loop: every due slot is claimed in Redis under the leader's epoch, then
sent with a task id derived from the entry and the slot's nominal due time.

Before every claim and again before every send, the local gate (Leadership.may_send) refuses
if the last successful renewal is older than the renew deadline: a leader that was paused
(SIGSTOP, a long GC, a frozen VM) sends nothing when it wakes, even before it learns that its
lease is gone; and the claim script refuses it anyway once a newer epoch exists.
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
from celery_stack_core import metrics
from celery_stack_core.config import Settings

log = logging.getLogger(__name__)

# A claimed slot whose send failed (broker down) is retried on later ticks for this long.
SEND_RETRY_WINDOW_MS = 60_000


def slot_id(entry: Entry, due_ms: int) -> str:
    """Task id from entry + nominal due time: a duplicate send is visible downstream."""
    return f"beat:{entry.name}:{due_ms}"


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
    pending: dict[tuple[str, int], Entry] = field(default_factory=dict)

    def _ttl_ms(self, entry: Entry) -> int:
        span = entry.every * 3 if entry.cron is None else 0
        return int(max(self.settings.BEAT_SLOT_TTL, span) * 1000)

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

    async def _send(self, entry: Entry, due_ms: int) -> bool:
        if not self.leadership.may_send():
            return False
        try:
            await self.send(entry, due_ms, self.leadership.epoch)
        except Exception as exc:
            metrics.BEAT_SLOTS.labels(entry.name, "send_failed").inc()
            log.warning(
                "could not send a claimed slot; retrying",
                extra={"entry": entry.name, "due_ms": due_ms, "error": repr(exc)},
            )
            self.pending[(entry.name, due_ms)] = entry
            return False
        self.pending.pop((entry.name, due_ms), None)
        metrics.BEAT_SLOTS.labels(entry.name, "sent").inc()
        metrics.BEAT_SEND_LATENESS.labels(entry.name).observe(
            max(0.0, (clock.wall_ms() - due_ms) / 1000)
        )
        return True

    async def tick(self) -> None:
        now_ms = clock.wall_ms()
        for (name, due_ms), entry in list(self.pending.items()):
            if now_ms - due_ms > SEND_RETRY_WINDOW_MS:
                self.pending.pop((name, due_ms))
                metrics.BEAT_SLOTS.labels(name, "missed").inc()
                log.error("gave up sending a claimed slot", extra={"entry": name, "due": due_ms})
            elif not await self._send(entry, due_ms):
                return
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
                skip_grace_ms=int(self.settings.BEAT_SKIP_GRACE * 1000),
                catchup_max=self.settings.BEAT_CATCHUP_MAX,
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
                    # Claimed but not sent: no later leader resends it (it is last-run now).
                    metrics.BEAT_SLOTS.labels(entry.name, "missed").inc()
                    log.warning(
                        "local gate: renewal too old, not sending a claimed slot",
                        extra={"entry": entry.name, "due_ms": due_ms},
                    )
                    return
            self.replica.next_due[entry.name] = slots.next_after(entry, max(newest, now_ms))

    async def run(self) -> None:
        """Tick until the leadership is lost (then return) or the task is cancelled."""
        tick = self.settings.BEAT_TICK
        planned = clock.now()
        while not self.leadership.lost:
            lag = max(0.0, clock.now() - planned)
            metrics.BEAT_TICK_LAG.set(lag)
            metrics.BEAT_RENEWAL_AGE.set(self.leadership.renewal_age())
            try:
                await self.tick()
            except Exception as exc:  # Redis or broker hiccup: the next tick tries again
                log.warning("beat tick failed", extra={"error": repr(exc)})
            if self.leadership.lost:
                return
            self.replica.progressed()
            metrics.BEAT_LAST_TICK.set_to_current_time()
            planned = max(planned + tick, clock.now())
            await asyncio.sleep(max(0.0, planned - clock.now()))
