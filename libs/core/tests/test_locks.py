"""Leases: exclusive, owner-checked renew and release, auto-renewal past the TTL."""

import asyncio
import json

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from celery_stack_core import keys
from celery_stack_core.locks import Lease, LeaseLost, hold


async def test_exclusive_and_owner_record(redis):
    async with hold(redis, "job", owner="a", ttl=5) as lease:
        assert lease is not None
        record = json.loads(await redis.get(keys.lock("job")))
        assert record["owner"] == "a" and len(record["nonce"]) == 16
        assert keys.lock("job") in await redis.smembers(keys.owner_locks("a"))
        assert await redis.exists(keys.owner_heartbeat("a"))
        async with hold(redis, "job", owner="b", ttl=5) as other:
            assert other is None
    assert not await redis.exists(keys.lock("job"))
    assert not await redis.smembers(keys.owner_locks("a"))


async def test_release_never_deletes_a_successors_lock(redis):
    old = Lease(redis, "job", "a", ttl=0.2)
    assert await old.acquire()
    while await redis.exists(keys.lock("job")):  # wait for the expiry itself: b takes over
        await asyncio.sleep(0.01)
    new = Lease(redis, "job", "b", ttl=5)
    assert await new.acquire()
    assert not await old.release()  # compare-and-delete refuses
    assert not await old.renew()  # compare-and-extend refuses
    assert old.lost
    assert json.loads(await redis.get(keys.lock("job")))["owner"] == "b"


async def test_auto_renewal_keeps_the_lease_past_its_ttl(redis):
    async with hold(redis, "long", owner="a", ttl=0.3) as lease:
        assert lease is not None
        renewals = 0
        renew = lease.renew

        async def counted() -> bool:
            nonlocal renewals
            renewals += 1
            return await renew()

        lease.renew = counted  # type: ignore[method-assign]
        started = asyncio.get_running_loop().time()
        while renewals < 4:  # the event itself: renewed again and again, past 3 TTLs
            assert asyncio.get_running_loop().time() - started < 30, "no renewals"
            await asyncio.sleep(0.02)
        lease.check()
        assert await redis.pttl(keys.lock("long")) > 0
        async with hold(redis, "long", owner="b", ttl=0.3) as other:
            assert other is None


async def test_lost_lease_is_detected(redis):
    async with hold(redis, "stolen", owner="a", ttl=0.3) as lease:
        assert lease is not None
        await redis.set(keys.lock("stolen"), "someone-else")  # e.g. expired and taken over
        started = asyncio.get_running_loop().time()
        while not lease.lost:  # the keeper's next renewal finds it gone
            assert asyncio.get_running_loop().time() - started < 30, "loss never noticed"
            await asyncio.sleep(0.02)
        try:
            lease.check()
            raise AssertionError("a lost lease must be reported")
        except LeaseLost:
            pass
    assert await redis.get(keys.lock("stolen")) == "someone-else"


async def test_hold_many_takes_the_free_ones_in_one_round_trip_and_releases_them(redis):
    from celery_stack_core.locks import hold_many

    async with hold(redis, "b", owner="other", ttl=5) as taken:
        assert taken is not None
        async with hold_many(redis, ["a", "b", "c"], owner="me", ttl=5) as leases:
            assert [lease.name for lease in leases] == ["a", "c"]  # b is someone else's
            for name in ("a", "c"):
                assert json.loads(await redis.get(keys.lock(name)))["owner"] == "me"
            assert await redis.smembers(keys.owner_locks("me")) == {
                keys.lock("a"),
                keys.lock("c"),
            }
        assert not await redis.exists(keys.lock("a"), keys.lock("c"))
        assert json.loads(await redis.get(keys.lock("b")))["owner"] == "other"


async def test_hold_many_renews_past_the_ttl_and_notices_a_loss(redis):
    from celery_stack_core.locks import hold_many

    # ttl 1 s, not less: a loaded 2-core machine stalled the keeper past a 0.3 s TTL once
    async with hold_many(redis, ["x", "y"], owner="me", ttl=1.0) as leases:
        await redis.set(keys.lock("y"), "someone-else")  # y expired and was taken over
        started = asyncio.get_running_loop().time()
        while not leases[1].lost:  # the keeper's next renewal finds it gone
            assert asyncio.get_running_loop().time() - started < 30, "loss never noticed"
            await asyncio.sleep(0.02)
        while await redis.pttl(keys.lock("x")) > 0 and (
            asyncio.get_running_loop().time() - started < 3.0  # three TTLs: x was renewed
        ):
            await asyncio.sleep(0.02)
        assert await redis.pttl(keys.lock("x")) > 0 and not leases[0].lost
    assert await redis.get(keys.lock("y")) == "someone-else"  # never released by us


def _failing(error: Exception):
    async def fail() -> bool:
        raise error

    return fail


async def test_a_keeper_that_fails_for_a_non_redis_reason_marks_the_lease_lost(redis, caplog):
    # A bug in the renewal is not a Redis hiccup: retrying it forever (and logging a warning
    # each time) let the lease expire under a holder whose check() still passed.
    async with hold(redis, "buggy", owner="a", ttl=0.3) as lease:
        assert lease is not None
        lease.renew = _failing(TypeError("a bug in the renewal"))  # type: ignore[method-assign]
        started = asyncio.get_running_loop().time()
        while not lease.lost:
            assert asyncio.get_running_loop().time() - started < 30, "the bug was swallowed"
            await asyncio.sleep(0.02)
        with pytest.raises(LeaseLost):
            lease.check()
    assert any(r.message == "lease keeper failed" for r in caplog.records)


async def test_a_release_that_redis_refuses_is_logged_and_anything_else_raises(redis, caplog):
    async with hold(redis, "down", owner="a", ttl=5) as lease:
        assert lease is not None
        lease.release = _failing(RedisConnectionError("Redis went away"))  # type: ignore[method-assign]
    # the TTL frees it; the failure leaves a trace with the lease's name
    assert [r.lease for r in caplog.records if r.message == "lease release failed"] == ["down"]

    with pytest.raises(TypeError, match="a bug"):
        async with hold(redis, "bug", owner="a", ttl=5) as lease:
            assert lease is not None
            lease.release = _failing(TypeError("a bug in the release"))  # type: ignore[method-assign]


async def test_hold_many_release_failures_are_logged_or_raised_the_same_way(
    redis, caplog, monkeypatch
):
    from celery_stack_core import locks

    real = locks._pipelined

    async def failing_release(redis_, calls):
        if calls and calls[0][0] == "lock_release":
            raise error
        return await real(redis_, calls)

    error: Exception = RedisConnectionError("Redis went away")
    monkeypatch.setattr(locks, "_pipelined", failing_release)
    async with locks.hold_many(redis, ["m1", "m2"], owner="a", ttl=5) as held:
        assert len(held) == 2
    assert any(r.message == "lease release failed" for r in caplog.records)
    error = TypeError("a bug in the release")
    with pytest.raises(TypeError):
        async with locks.hold_many(redis, ["m3"], owner="a", ttl=5) as held:
            assert held


async def _renewal_that_swallows_cancel() -> bool:
    """A renewal in flight when the holder leaves, whose client turns the cancellation into a
    connection error (redis-py can: celery_stack_counters.flush._stop says so)."""
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        raise RedisConnectionError("connection closed while reading") from None
    return True


async def test_a_keeper_whose_renewal_swallows_the_cancel_still_ends(redis, monkeypatch):
    # Without Lease.stopping the keeper took the error for a Redis hiccup and kept renewing:
    # leaving the block waited on it forever (a flusher hung so, holding its shards' leases).
    from celery_stack_core import locks

    async def renew_then_swallow(self: Lease) -> bool:
        return await _renewal_that_swallows_cancel()

    monkeypatch.setattr(Lease, "renew", renew_then_swallow)
    async with asyncio.timeout(10):
        async with hold(redis, "one", owner="a", ttl=0.15) as lease:
            assert lease is not None
            await asyncio.sleep(0.2)  # the keeper is in its renewal now

    real = locks._pipelined

    async def pipelined(redis_, calls):
        if calls and calls[0][0] == "lock_renew":
            return [await _renewal_that_swallows_cancel()] * len(calls)
        return await real(redis_, calls)

    monkeypatch.setattr(locks, "_pipelined", pipelined)
    async with asyncio.timeout(10):
        async with locks.hold_many(redis, ["x", "y"], owner="a", ttl=0.15) as leases:
            assert len(leases) == 2
            await asyncio.sleep(0.2)


async def test_a_holder_cancelled_while_its_keeper_stops_is_cancelled_and_releases(
    redis, monkeypatch
):
    # The holder waited on its keeper under suppress(CancelledError): a cancel that arrived in
    # that wait was swallowed and the holder went on as if never cancelled.
    async def renew_slow_to_stop(self: Lease) -> bool:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(1)  # a disconnect that takes its time
            raise RedisConnectionError("connection closed while reading") from None
        return True

    monkeypatch.setattr(Lease, "renew", renew_slow_to_stop)

    async def holder() -> None:
        async with hold(redis, "slow", owner="a", ttl=0.15) as lease:
            assert lease is not None
            await asyncio.sleep(0.2)  # the keeper is in its renewal when the block ends

    task = asyncio.create_task(holder())
    await asyncio.sleep(0.5)  # the block has ended; the holder waits for its keeper
    assert not task.done()
    task.cancel()
    await asyncio.wait({task}, timeout=10)
    assert task.cancelled()
    assert await redis.get(keys.lock("slow")) is None  # released all the same
