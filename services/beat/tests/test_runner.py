"""The leader's tick on real Redis with a recording sender: catch-up policies, the local gate,
and the liveness heartbeat that only ticks prove."""

from __future__ import annotations

import asyncio

import pytest

from celery_stack_beat import clock, fencing
from celery_stack_beat.election import Leadership, Timing
from celery_stack_beat.election_redis import RedisLease
from celery_stack_beat.fencing import Claim
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
    s = settings.replace(BEAT_CATCHUP_MAX=5, BEAT_SKIP_GRACE=2.0)
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
    ticker, _ = make_ticker(redis, settings.replace(BEAT_TICK=0.05), [e], tmp_path)
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
    hang.set()  # the shielded send ends too: no task of this test outlives it
    await asyncio.gather(task, *ticker.inflight, return_exceptions=True)


async def test_heartbeat_is_not_touched_when_ticks_fail(redis, settings, tmp_path):
    """Liveness: a leader whose every tick raises (Redis unreachable, say) is not alive."""
    await lead(redis)
    e = Entry("fast", "maintenance.x", 1.0, "all")
    ticker, _ = make_ticker(redis, settings.replace(BEAT_TICK=0.05), [e], tmp_path)
    ticks = 0

    async def broken() -> None:
        nonlocal ticks
        ticks += 1
        raise ConnectionError("redis down")

    ticker.tick = broken  # type: ignore[method-assign]
    before = ticker.replica.progress_at
    task = asyncio.create_task(ticker.run())
    while ticks < 5:
        await asyncio.sleep(0.05)
    task.cancel()
    assert ticker.replica.progress_at == before
    assert not (tmp_path / "alive").exists()


async def _wait_claimed(redis, entry: str, due_ms: int) -> None:
    for _ in range(200):
        if (await fencing.last_runs(redis)).get(entry) == due_ms:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the slot was never claimed")


@pytest.mark.parametrize("failure", ["crash", "gate", "broker"])
async def test_a_claimed_slot_left_unsent_is_resent_by_the_next_leader(
    redis, settings, tmp_path, failure: str
):
    """Leader 1 claims a slot (last-run moves past it) but does not send it: it dies between
    claim and send (kill -9), its local gate refuses after the claim, or the broker is down
    when leadership changes. Leader 2 resends it with the same task id, once, after the grace;
    leader 1, fenced, resends nothing."""
    a = RedisLease(redis, "a", T)
    epoch1 = await a.try_acquire()
    assert epoch1 is not None
    e = Entry("hourly", "maintenance.x", 3600.0, "all")
    hour = (clock.wall_ms() // 3_600_000) * 3_600_000
    await redis.hset(keys.BEAT_LAST, "hourly", hour - 3_600_000)  # this hour's slot is due
    lead1 = Leadership(epoch=epoch1, renewed_at=clock.now(), deadline=T.deadline)
    t1, sent1 = make_ticker(redis, settings, [e], tmp_path, lead1)
    if failure == "crash":

        async def hang(entry: Entry, due_ms: int, epoch: int) -> None:
            await asyncio.Event().wait()

        t1.send = hang
        task = asyncio.create_task(t1.tick())
        await _wait_claimed(redis, "hourly", hour)
        await asyncio.sleep(0.1)
        for fut in [task, *getattr(t1, "inflight", ())]:  # the process dies: nothing survives
            fut.cancel()
    elif failure == "gate":
        claim = t1._claim

        async def claim_then_pause(entry: Entry, due_ms: int, mode: str) -> Claim:
            got = await claim(entry, due_ms, mode)
            lead1.renewed_at -= 10  # paused right after the claim: the gate now refuses
            return got

        t1._claim = claim_then_pause  # type: ignore[method-assign]
        await t1.tick()
    else:

        async def down(entry: Entry, due_ms: int, epoch: int) -> None:
            raise ConnectionError("broker down")

        t1.send = down
        await t1.tick()
    assert sent1 == []
    assert (await fencing.last_runs(redis))["hourly"] == hour, "claimed: last-run moved past it"
    await redis.delete(keys.BEAT_LEASE)  # leader 1 is gone; leader 2 takes over
    epoch2 = await RedisLease(redis, "b", T).try_acquire()
    assert epoch2 is not None and epoch2 > epoch1
    lead2 = Leadership(epoch=epoch2, renewed_at=clock.now(), deadline=T.deadline)
    t2, sent2 = make_ticker(redis, settings, [e], tmp_path, lead2)
    t2.pending_grace_ms = 60_000  # claimed just now: its claimer might still be sending it
    await t2.tick()
    assert sent2 == []
    t2.pending_grace_ms = 0
    await t2.tick()
    assert sent2 == [f"beat:hourly:{hour}"], "resent with the slot's own task id"
    await t2.tick()
    assert sent2 == [f"beat:hourly:{hour}"], "sent once: no longer pending"
    # The superseded leader, resumed and working again, resends nothing.
    await redis.hset(keys.BEAT_LAST, "hourly", hour - 3_600_000)
    t1.send = t2.send
    t1.pending_grace_ms = 0
    lead1.renewed_at = clock.now()
    await t1.tick()
    assert sent2 == [f"beat:hourly:{hour}"] and lead1.lost
