"""Leases: exclusive, owner-checked renew and release, auto-renewal past the TTL."""

import asyncio
import json

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

    async with hold_many(redis, ["x", "y"], owner="me", ttl=0.3) as leases:
        await redis.set(keys.lock("y"), "someone-else")  # y expired and was taken over
        started = asyncio.get_running_loop().time()
        while not leases[1].lost:  # the keeper's next renewal finds it gone
            assert asyncio.get_running_loop().time() - started < 30, "loss never noticed"
            await asyncio.sleep(0.02)
        while await redis.pttl(keys.lock("x")) > 0 and (
            asyncio.get_running_loop().time() - started < 1.0  # three TTLs: x was renewed
        ):
            await asyncio.sleep(0.02)
        assert await redis.pttl(keys.lock("x")) > 0 and not leases[0].lost
    assert await redis.get(keys.lock("y")) == "someone-else"  # never released by us
