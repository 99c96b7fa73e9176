"""Leader election, backend-neutral: the campaign (standby) and hold (leader) loops.

A backend answers three questions: can I take the lease now (and with which epoch), is it
still mine (renew), and let it go (release). The timing is ours, on a monotonic clock
(clock.now), with client-go's meaning:

- the leader renews every RETRY_PERIOD; a renewal counts from the moment it was *sent*;
- when no renewal succeeded for RENEW_DEADLINE, the leader gives up: it stops sending at once
  (Leadership.may_send, the local gate) and the process exits;
- a standby takes over only after LEASE_DURATION without a renewal, which is later than the
  deadline, so the old leader has stopped before the new one starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from celery_stack_beat import clock
from celery_stack_core.config import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timing:
    lease: float
    deadline: float
    retry: float

    @classmethod
    def from_settings(cls, settings: Settings) -> Timing:
        return cls(
            settings.beat.lease_duration, settings.beat.renew_deadline, settings.beat.retry_period
        )


class Backend(Protocol):
    kind: str
    identity: str

    async def try_acquire(self) -> int | None:
        """Take the lease if it is free or expired; the new epoch, or None if someone holds it."""

    async def renew(self) -> bool:
        """True: renewed. False: the lease is no longer ours. Raises when it cannot tell."""

    async def release(self) -> None:
        """Give the lease up now (SIGTERM), so a standby takes over without waiting."""

    async def holder(self) -> str | None:
        """Who holds the lease, as far as this backend can see (for standbys' reports)."""

    async def wait(self, seconds: float) -> None:
        """A standby's pause between attempts; may end early when the lease is released."""

    async def close(self) -> None: ...


@dataclass
class Leadership:
    """What the leader knows about its own lease; the local gate reads it before every send."""

    epoch: int
    renewed_at: float  # clock.now() when the last successful renewal was sent
    deadline: float
    lost: bool = False

    def renewal_age(self) -> float:
        return clock.now() - self.renewed_at

    def may_send(self) -> bool:
        return not self.lost and self.renewal_age() < self.deadline


class Outcome(enum.Enum):
    STOPPED = "stopped"  # SIGTERM: release and exit 0
    LOST = "lost"  # someone else holds the lease
    DEADLINE = "deadline"  # could not renew in time


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Sleep, waking early on stop; True if stop is set."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
    return stop.is_set()


async def campaign(
    backend: Backend,
    timing: Timing,
    stop: asyncio.Event,
    on_attempt: Callable[[], Awaitable[None]] | None = None,
) -> Leadership | None:
    """Try to take the lease every retry period until we lead (or stop is set)."""
    while not stop.is_set():
        sent = clock.now()
        try:
            epoch = await asyncio.wait_for(backend.try_acquire(), timeout=timing.retry * 2)
        except Exception as exc:
            log.warning("leader election attempt failed", extra={"error": repr(exc)})
            epoch = None
        if epoch is not None:
            return Leadership(epoch=epoch, renewed_at=sent, deadline=timing.deadline)
        if on_attempt is not None:
            await on_attempt()
        waiter = asyncio.ensure_future(backend.wait(timing.retry))
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        for task in (waiter, stopper):
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass  # the one we just cancelled
            except Exception as exc:  # a wait that failed: the next attempt's try_acquire tells
                log.warning("standby wait failed", extra={"error": repr(exc)})
    return None


async def hold(
    backend: Backend,
    leadership: Leadership,
    timing: Timing,
    stop: asyncio.Event,
    on_renew: Callable[[], Awaitable[None]] | None = None,
) -> Outcome:
    """Renew every retry period until stop (STOPPED), loss (LOST) or the deadline (DEADLINE)."""
    while True:
        if await _sleep_or_stop(stop, timing.retry):
            return Outcome.STOPPED
        if leadership.lost:  # the fencing check found a newer epoch
            return Outcome.LOST
        sent = clock.now()
        remaining = leadership.deadline - leadership.renewal_age()
        try:
            ok = await asyncio.wait_for(backend.renew(), timeout=max(0.05, remaining))
        except Exception as exc:
            log.warning(
                "lease renewal failed",
                extra={"error": repr(exc), "renewal_age": round(leadership.renewal_age(), 3)},
            )
        else:
            if not ok:
                leadership.lost = True
                return Outcome.LOST
            leadership.renewed_at = sent
            if on_renew is not None:
                await on_renew()
        if not leadership.may_send():
            leadership.lost = True
            return Outcome.DEADLINE
