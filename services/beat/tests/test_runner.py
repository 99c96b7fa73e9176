"""The leader's tick on real Redis with a recording sender: catch-up policies, the local gate,
and the liveness heartbeat that only ticks prove."""

from __future__ import annotations

import asyncio

from celery_stack_beat import clock, fencing
from celery_stack_beat.election import Leadership, Timing
from celery_stack_beat.election_redis import RedisLease
from celery_stack_beat.runner import Replica, Ticker, slot_id
from celery_stack_beat.schedule import Entry
from celery_stack_core import keys
from celery_stack_core.config import Settings

T = Timing(lease=5.0, deadline=3.0, retry=0.5)


def make_ticker(redis, settings: Settings, entries: list[Entry], tmp_path, leadership=None):
    sent: list[str] = []

    async def send(entry: Entry, due_ms: int, epoch: int) -> None:
        sent.append(slot_id(entry, due_ms))

    lead = leadership or Leadership(epoch=1, renewed_at=clock.now(), deadline=T.deadline)
    replica = Replica("me", "redis", str(tmp_path / "alive"))
    return Ticker(redis, entries, lead, replica, settings, send), sent


async def lead(redis) -> int:
    epoch = await RedisLease(redis, "me", T).try_acquire()
    assert epoch is not None
    return epoch


async def test_first_tick_starts_history_now_and_sends_nothing_old(redis, settings, tmp_path):
    await lead(redis)
    e = Entry("hourly", "maintenance.x", 3600.0, "all")
    ticker, sent = make_ticker(redis, settings, [e], tmp_path)
    await ticker.tick()
    assert sent == []  # a new entry has no missed history
    assert await fencing.last_runs(redis) == {"hourly": (clock.wall_ms() // 3_600_000) * 3_600_000}
    assert ticker.replica.next_due["hourly"] > clock.wall_ms()


async def test_catch_up_policies_after_downtime(redis, settings, tmp_path):
    await lead(redis)
    now = clock.wall_ms()
    base = (now // 1000) * 1000 - 20_000  # 20 one-second slots were missed
    entries = [
        Entry("all", "maintenance.a", 1.0, "all"),
        Entry("once", "maintenance.o", 1.0, "once"),
        Entry("skip", "maintenance.s", 1.0, "skip"),
        Entry("late", "maintenance.l", 3600.0, "skip"),
    ]
    await redis.hset(keys.BEAT_LAST, mapping={e.name: base for e in entries})
    await redis.hset(keys.BEAT_LAST, "late", base - 7_200_000)  # two hourly slots missed
    s = settings.model_copy(update={"BEAT_CATCHUP_MAX": 5, "BEAT_SKIP_GRACE": 2.0})
    ticker, sent = make_ticker(redis, s, entries, tmp_path)
    await ticker.tick()
    newest = (await fencing.last_runs(redis))["once"]  # the slot due when the tick ran
    assert 0 <= clock.wall_ms() - newest < 5000
    by = {
        name: [x for x in sent if x.startswith(f"beat:{name}:")] for name in ("all", "once", "skip")
    }
    assert by["all"] == [f"beat:all:{newest - k * 1000}" for k in range(4, -1, -1)]
    assert by["once"] == [f"beat:once:{newest}"]
    assert by["skip"] == [f"beat:skip:{newest}"]
    last = await fencing.last_runs(redis)
    hour = (newest // 3_600_000) * 3_600_000
    assert last["late"] == hour, "a skipped slot is recorded, not re-evaluated"
    if newest - hour > 2000:  # the newest hourly slot is later than the grace: not sent
        assert not [x for x in sent if x.startswith("beat:late:")]
    # A second tick in the same second sends nothing again.
    before = len(sent)
    await ticker.tick()
    assert len(sent) == before or all(x.endswith(str(newest + 1000)) for x in sent[before:])


async def test_local_gate_refuses_when_renewal_is_older_than_the_deadline(
    redis, settings, tmp_path
):
    """The epoch in Redis is still ours, but our last renewal is too old: claim and send
    nothing (a leader just resumed from a pause must not act before it re-checks)."""
    epoch = await lead(redis)
    e = Entry("fast", "maintenance.x", 1.0, "all")
    await redis.hset(keys.BEAT_LAST, "fast", clock.wall_ms() - 5000)
    stale = Leadership(epoch=epoch, renewed_at=clock.now() - T.deadline - 0.1, deadline=T.deadline)
    ticker, sent = make_ticker(redis, settings, [e], tmp_path, stale)
    await ticker.tick()
    assert sent == []
    assert [k async for k in redis.scan_iter(match=keys.beat_slot("fast", 0)[:-1] + "*")] == []


async def test_a_fenced_leader_stops_ticking(redis, settings, tmp_path):
    epoch = await lead(redis)
    await fencing.raise_epoch(redis, epoch + 1)  # someone newer leads
    e = Entry("fast", "maintenance.x", 1.0, "all")
    await redis.hset(keys.BEAT_LAST, "fast", clock.wall_ms() - 3000)
    ticker, sent = make_ticker(redis, settings, [e], tmp_path)
    await asyncio.wait_for(ticker.run(), timeout=10)  # returns: leadership lost
    assert sent == [] and ticker.leadership.lost


async def test_heartbeat_is_proof_of_ticking_not_of_renewing(redis, settings, tmp_path):
    """Liveness: a leader whose tick is stuck stops touching its heartbeat even though its
    lease keeps being renewed."""
    await lead(redis)
    e = Entry("fast", "maintenance.x", 0.2, "all")
    ticker, _ = make_ticker(redis, settings.model_copy(update={"BEAT_TICK": 0.05}), [e], tmp_path)
    task = asyncio.create_task(ticker.run())
    await asyncio.sleep(0.5)
    assert ticker.replica.progress_age() < 0.3
    hang = asyncio.Event()

    async def stuck(entry: Entry, due_ms: int, epoch: int) -> None:
        await hang.wait()

    ticker.send = stuck
    await asyncio.sleep(1.0)
    ticker.leadership.renewed_at = clock.now()  # renewals still succeed
    assert ticker.replica.progress_age() > 0.6
    task.cancel()
