"""Slot arithmetic and catch-up policies (pure functions)."""

from __future__ import annotations

import pytest

from celery_stack_beat import slots
from celery_stack_beat.schedule import Entry, schedule
from celery_stack_core.config import Settings

S = 1000


def plan(entry: Entry, last: int, now: int) -> slots.Plan:
    return slots.plan(entry, last, now, skip_grace_ms=5 * S, catchup_max=3)


def test_interval_slots_are_aligned_multiples() -> None:
    e = Entry("e", "maintenance.x", 2.0)
    assert slots.latest_at_or_before(e, 7_500) == 6_000
    assert slots.next_after(e, 6_000) == 8_000
    assert slots.due_between(e, 6_000, 13_000, keep=10) == ([8_000, 10_000, 12_000], 3)
    assert slots.due_between(e, 6_000, 6_000, keep=10) == ([], 0)


def test_cron_slots() -> None:
    e = Entry("c", "maintenance.x", cron="*/5 * * * *")
    t = 1_700_000_100_000  # 22:15:00 UTC, a slot
    assert slots.latest_at_or_before(e, t) == t
    assert slots.latest_at_or_before(e, t - 1) == t - 300 * S
    assert slots.next_after(e, t) == t + 300 * S
    due, total = slots.due_between(e, t, t + 3600 * S, keep=2)
    assert total == 12 and due == [t + 3300 * S, t + 3600 * S]


def test_on_time_slot_is_sent_by_every_policy() -> None:
    for policy in ("skip", "once", "all"):
        e = Entry("e", "maintenance.x", 1.0, policy)  # type: ignore[arg-type]
        assert plan(e, 10 * S, 11 * S + 200) == slots.Plan(send=[11 * S])


def test_catch_up_after_downtime() -> None:
    last, now = 10 * S, 20 * S + 100  # ten slots due: 11..20
    skip = plan(Entry("e", "maintenance.x", 1.0, "skip"), last, now)
    assert skip == slots.Plan(send=[20 * S], missed=9)  # the newest is within the grace
    # A slot later than the grace is not sent under "skip", but recorded (claimed as skipped).
    late = plan(Entry("e", "maintenance.x", 10.0, "skip"), 0, 26 * S + 100)
    assert late == slots.Plan(skip=20 * S, missed=2)
    once = plan(Entry("e", "maintenance.x", 1.0, "once"), last, now)
    assert once == slots.Plan(send=[20 * S], coalesced=9)
    every = plan(Entry("e", "maintenance.x", 1.0, "all"), last, now)
    assert every == slots.Plan(send=[18 * S, 19 * S, 20 * S], missed=7)  # bounded by 3


def test_entry_validation() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Entry("e", "maintenance.x")
    with pytest.raises(ValueError, match="exactly one"):
        Entry("e", "maintenance.x", 1.0, cron="* * * * *")
    with pytest.raises(ValueError, match="no queue"):
        Entry("e", "nowhere.x", 1.0)
    with pytest.raises(ValueError, match="':'"):
        Entry("a:b", "maintenance.x", 1.0)


def test_shipped_schedule_is_valid() -> None:
    entries = schedule(Settings(ENVIRONMENT="test"))
    names = [e.name for e in entries]
    assert len(names) == len(set(names)), "entry names are slot ids: they must be unique"
    assert {"counters-flush", "counters-recount"} <= set(names)
    for e in entries:
        assert e.queue in ("counters", "scans", "maintenance")


def test_beat_timing_is_validated() -> None:
    """The renew deadline must end before the lease can expire for a standby."""
    Settings(ENVIRONMENT="test")  # the defaults: 15 / 10 / 2
    with pytest.raises(ValueError, match="BEAT_RENEW_DEADLINE < BEAT_LEASE_DURATION"):
        Settings(ENVIRONMENT="test", BEAT_LEASE_DURATION=10, BEAT_RENEW_DEADLINE=10)
    with pytest.raises(ValueError, match="BEAT_RETRY_PERIOD"):
        Settings(ENVIRONMENT="test", BEAT_RETRY_PERIOD=12)
    with pytest.raises(ValueError, match="BEAT_TICK"):
        Settings(ENVIRONMENT="test", BEAT_TICK=11)


def test_cron_catch_up_after_long_downtime_keeps_the_newest_slots() -> None:
    """A "* * * * *" entry down for 8 days (more slots than the walk bound): "once" sends the
    current slot only, and "all" sends the newest BEAT_CATCHUP_MAX, ending at the current one."""
    now = 1_700_000_100_000 + 20 * S  # 20 s past a minute
    current = now - 20 * S
    last = current - 8 * 86_400 * S
    once = Entry("o", "maintenance.x", cron="* * * * *", catch_up="once")
    p = slots.plan(once, last, now, skip_grace_ms=5 * S, catchup_max=100)
    assert p.send == [current]
    every = Entry("a", "maintenance.x", cron="* * * * *", catch_up="all")
    p = slots.plan(every, last, now, skip_grace_ms=5 * S, catchup_max=100)
    assert p.send == [current - k * 60 * S for k in range(99, -1, -1)]
    # The next tick, a minute later, sends one slot: the catch-up does not continue.
    p = slots.plan(every, p.send[-1], now + 60 * S, skip_grace_ms=5 * S, catchup_max=100)
    assert p.send == [current + 60 * S] and p.missed == 0
