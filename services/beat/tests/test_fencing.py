"""The Redis side of the contract, on real Redis: the lease with its epoch, compare-and-extend,
compare-and-delete, and slot claims fenced by the epoch."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from celery_stack_beat import election, fencing
from celery_stack_beat.election import Leadership, Outcome, Timing
from celery_stack_beat.election_redis import RedisLease
from celery_stack_beat.fencing import Claim
from celery_stack_core import keys
from celery_stack_core.config import Settings
from celery_stack_core.redis_client import make_async_redis

T = Timing(lease=2.0, deadline=1.2, retry=0.2)


async def claim(redis: aioredis.Redis, epoch: int, due: int, mode: str = "send") -> Claim:
    return await fencing.claim(
        redis, epoch=epoch, entry="e", due_ms=due, ttl_ms=60_000, holder="h", mode=mode
    )


async def test_lease_is_exclusive_and_each_acquisition_gets_a_new_epoch(redis) -> None:
    a, b = RedisLease(redis, "a", T), RedisLease(redis, "b", T)
    assert await a.try_acquire() == 1
    assert await b.try_acquire() is None
    assert await a.renew() is True
    assert await b.renew() is False  # b never held it: compare-and-extend refuses
    await b.release()  # not b's: compare-and-delete leaves it
    assert await a.holder() == "a"
    await a.release()
    assert await b.try_acquire() == 2
    assert await fencing.current_epoch(redis) == 2


async def test_expired_lease_is_taken_over_and_the_old_holder_cannot_renew(redis) -> None:
    a, b = RedisLease(redis, "a", T), RedisLease(redis, "b", T)
    assert await a.try_acquire() == 1
    await redis.pexpire(keys.BEAT_LEASE, 1)  # as if a had been paused past its lease
    while await redis.exists(keys.BEAT_LEASE):  # the expiry itself
        await asyncio.sleep(0.005)
    assert await b.try_acquire() == 2
    assert await a.renew() is False
    await a.release()
    assert await b.holder() == "b"


async def test_claim_is_fenced_by_epoch_and_once_per_slot(redis) -> None:
    a, b = RedisLease(redis, "a", T), RedisLease(redis, "b", T)
    assert await a.try_acquire() == 1
    assert await claim(redis, 1, 0, "init") is Claim.CLAIMED
    assert await claim(redis, 1, 0, "init") is Claim.DUPLICATE  # history starts once
    assert await claim(redis, 1, 1000) is Claim.CLAIMED
    assert await claim(redis, 1, 1000) is Claim.DUPLICATE
    assert await fencing.last_runs(redis) == {"e": 1000}
    # A takeover: the old leader (epoch 1) is refused everything, even a new slot.
    await a.release()
    assert await b.try_acquire() == 2
    assert await claim(redis, 1, 2000) is Claim.STALE
    assert await claim(redis, 2, 1000) is Claim.DUPLICATE  # already sent by epoch 1
    assert await claim(redis, 2, 500) is Claim.DUPLICATE  # older than last-run
    assert await claim(redis, 2, 2000) is Claim.CLAIMED
    assert await redis.pttl(keys.beat_slot("e", 2000)) > 0, "slot keys carry a TTL"


async def test_claimed_slots_stay_pending_until_sent_and_only_the_current_epoch_resends(
    redis,
) -> None:
    a = RedisLease(redis, "a", T)
    assert await a.try_acquire() == 1
    assert await claim(redis, 1, 1000) is Claim.CLAIMED
    assert await claim(redis, 1, 2000, "skip") is Claim.CLAIMED  # nothing to send: not pending
    assert await fencing.pending_due(redis, epoch=1, grace_ms=0, window_ms=60_000) == (
        [],
        ["beat:e:1000"],
    )
    # Within the grace its claimer may still be sending it: not yet due for a resend.
    assert await fencing.pending_due(redis, epoch=1, grace_ms=60_000, window_ms=120_000) == (
        [],
        [],
    )
    await a.release()
    assert await RedisLease(redis, "b", T).try_acquire() == 2
    assert await fencing.pending_due(redis, epoch=1, grace_ms=0, window_ms=60_000) is None
    assert await fencing.pending_due(redis, epoch=2, grace_ms=0, window_ms=60_000) == (
        [],
        ["beat:e:1000"],
    )
    await fencing.sent(redis, "e", 1000)
    assert await fencing.pending_due(redis, epoch=2, grace_ms=0, window_ms=60_000) == ([], [])
    # Past the retry window (counted from the claim) a pending slot is given up and removed.
    assert await claim(redis, 2, 3000) is Claim.CLAIMED
    claimed_at = await redis.zscore(keys.BEAT_PENDING, "beat:e:3000")
    await redis.zadd(keys.BEAT_PENDING, {"beat:e:3000": claimed_at - 61_000})
    assert await fencing.pending_due(redis, epoch=2, grace_ms=0, window_ms=60_000) == (
        ["beat:e:3000"],
        [],
    )
    assert await redis.zcard(keys.BEAT_PENDING) == 0


async def test_raise_epoch_never_goes_down(redis) -> None:
    assert await fencing.raise_epoch(redis, 5) is True
    assert await fencing.raise_epoch(redis, 4) is False
    assert await fencing.current_epoch(redis) == 5
    assert await claim(redis, 4, 1000) is Claim.STALE
    assert await claim(redis, 5, 1000) is Claim.CLAIMED


async def test_raise_epoch_refuses_an_epoch_already_current(redis) -> None:
    """Two Lease holders that computed the same epoch (the Lease deleted and recreated between
    their reads): only the first may make it current; the second is fenced, never shares it."""
    assert await fencing.raise_epoch(redis, 7) is True
    assert await fencing.raise_epoch(redis, 7) is False
    assert await fencing.current_epoch(redis) == 7
    assert await fencing.raise_epoch(redis, 8) is True


async def test_hold_gives_up_at_the_renew_deadline_when_redis_is_unreachable(redis) -> None:
    """Renewals that cannot reach Redis: the leader stops sending at the deadline, before its
    lease could expire for a standby, measured on the monotonic clock."""
    lease = RedisLease(redis, "a", T)
    assert await lease.try_acquire() == 1
    dead = make_async_redis(Settings(ENVIRONMENT="test", REDIS_URL="redis://127.0.0.1:1/0"))
    lease.redis = dead
    leadership = Leadership(epoch=1, renewed_at=election.clock.now(), deadline=T.deadline)
    assert leadership.may_send()
    holding = asyncio.create_task(election.hold(lease, leadership, T, asyncio.Event()))
    # No overlap with a successor: the leader never may send once its lease could have expired.
    # Sampled in that order (TTL, then may_send), so a late sample on a loaded machine cannot
    # pair a TTL read after the expiry with a may_send read before the deadline.
    samples = []
    while not holding.done() or len(samples) < 2:
        ttl = await redis.pttl(keys.BEAT_LEASE)
        samples.append((ttl, leadership.may_send()))
        await asyncio.sleep(0.01)
    assert await holding is Outcome.DEADLINE
    assert not leadership.may_send()
    assert not [s for s in samples if s[0] <= 0 and s[1]], samples
    assert any(ttl > 0 and ok for ttl, ok in samples[:1]), samples  # it led at first
    await dead.aclose()


async def test_hold_reports_loss_when_someone_else_holds_the_lease(redis) -> None:
    a = RedisLease(redis, "a", T)
    assert await a.try_acquire() == 1
    await redis.delete(keys.BEAT_LEASE)
    b = RedisLease(redis, "b", T)
    assert await b.try_acquire() == 2
    leadership = Leadership(epoch=1, renewed_at=election.clock.now(), deadline=T.deadline)
    assert await election.hold(a, leadership, T, asyncio.Event()) is Outcome.LOST
    assert not leadership.may_send()


async def test_release_wakes_a_waiting_standby(redis) -> None:
    """SIGTERM handover: the release is announced, so a standby does not sleep out its retry."""
    a, b = RedisLease(redis, "a", T), RedisLease(redis, "b", T)
    assert await a.try_acquire() == 1
    waiting = asyncio.create_task(b.wait(60))
    while (await redis.pubsub_numsub(keys.BEAT_RELEASED))[0][1] < 1:  # b is subscribed
        assert not waiting.done(), waiting
        await asyncio.sleep(0.01)
    assert not waiting.done()
    await a.release()
    await asyncio.wait_for(waiting, timeout=10)  # long before its 60 s
    assert await b.try_acquire() == 2
    await b.close()


class _BrokenPubSub:
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def subscribe(self, *_: object) -> None:
        raise self.error

    async def aclose(self) -> None:
        pass


async def test_a_standby_wait_whose_pubsub_fails_logs_and_polls_and_a_bug_raises(
    redis, caplog, monkeypatch
) -> None:
    lease = RedisLease(redis, "standby", T)
    monkeypatch.setattr(
        redis, "pubsub", lambda: _BrokenPubSub(RedisConnectionError("Redis went away"))
    )
    started = asyncio.get_running_loop().time()
    await lease.wait(0.2)  # still waits the retry period: plain polling
    assert asyncio.get_running_loop().time() - started >= 0.19
    warned = [r for r in caplog.records if "pub/sub failed" in r.message]
    assert warned and warned[0].identity == "standby" and "ConnectionError" in warned[0].error
    monkeypatch.setattr(redis, "pubsub", lambda: _BrokenPubSub(TypeError("a bug")))
    with pytest.raises(TypeError):
        await lease.wait(0.2)
