"""The exactly-once flush protocol, step by step, on real Redis and PostgreSQL."""

import random
from collections import Counter

import pytest
from sqlalchemy import text

from celery_stack_core import buffer
from celery_stack_core.hooks import HOOKS
from celery_stack_core.keys import ShardKeys
from celery_stack_counters.flush import STEPS, ack, claim, flush_shard
from celery_stack_counters.flush_all import FlushFailed, all_shards, flush_all

SHARDS = 4


async def ingest(redis, ids, per_id=1):
    for i in ids:
        for _ in range(per_id):
            await buffer.increment(redis, "post", "views", i, shards=SHARDS)


async def flush_everything(redis, engine):
    return await flush_all(redis, engine, shards=SHARDS, owner="test", lease_ttl=5)


class Crash(Exception):
    pass


def crash_at(step):
    async def hook(s):
        if s == step:
            raise Crash(s)

    return hook


async def test_flush_applies_all_buffered_views(column, redis, engine, posts):
    ids = await posts(50)
    await ingest(redis, ids, per_id=3)
    results = await flush_everything(redis, engine)
    assert sum(r.applied for r in results) == 50
    assert await column(engine, "posts", "views") == dict.fromkeys(ids, 3)
    for sk in all_shards(SHARDS):
        assert not await redis.exists(sk.live, sk.inflight, sk.batch)
    # nothing left: a second flush is a no-op
    assert all(r.outcome == "empty" for r in await flush_everything(redis, engine))


@pytest.mark.parametrize("step", STEPS)
async def test_crash_at_any_step_loses_nothing_and_applies_nothing_twice(
    column, redis, engine, posts, step
):
    ids = await posts(40)
    await ingest(redis, ids, per_id=2)
    shard = ShardKeys("post", "views", 0)
    with pytest.raises(Crash), HOOKS.installed("flush", crash_at(step)):
        await flush_shard(redis, engine, shard)
    # more views arrive while the crashed batch sits in flight
    await ingest(redis, ids, per_id=1)
    await flush_everything(redis, engine)
    assert await column(engine, "posts", "views") == dict.fromkeys(ids, 3)
    async with engine.connect() as conn:
        ledger, views = (
            await conn.execute(
                text(
                    "SELECT (SELECT sum(total) FROM counter_batches), (SELECT sum(views) FROM posts)"
                )
            )
        ).one()
    # every view came through exactly one ledger row (a batch applied twice, or without its
    # row, or a row without its deltas, would make these differ)
    assert ledger == views == 3 * len(ids)


async def test_resumed_batch_keeps_its_id(redis, engine, posts):
    ids = await posts(5)
    await ingest(redis, ids)
    sk = [sk for sk in all_shards(SHARDS) if await redis.exists(sk.live)][0]
    first = await claim(redis, sk)
    await ingest(redis, ids)  # new increments go to the live hash, not the in-flight one
    again = await claim(redis, sk)
    assert again.batch_id == first.batch_id and again.resumed and not first.resumed


async def test_late_ack_of_an_old_batch_deletes_nothing(redis, engine, posts):
    ids = await posts(5)
    sk = ShardKeys("post", "views", 0)
    await redis.hset(sk.live, mapping={str(ids[0]): 1})
    old = await claim(redis, sk)
    assert await ack(redis, sk, old.batch_id)
    await redis.hset(sk.live, mapping={str(ids[0]): 5})
    new = await claim(redis, sk)
    assert not await ack(redis, sk, old.batch_id)  # a paused flusher's late ack
    assert await redis.hget(sk.inflight, str(ids[0])) == "5"
    assert await ack(redis, sk, new.batch_id)


async def test_rows_that_no_longer_exist_are_dropped_not_failed(column, redis, engine, posts):
    ids = await posts(3)
    sk = ShardKeys("post", "views", 0)
    await redis.hset(
        sk.live,
        mapping={str(ids[0]): 2, "999999": 7, "not-an-id": 1, "99999999999999999999": 1, "-3": 1},
    )
    res = await flush_shard(redis, engine, sk)
    # the out-of-range ids would fail the batch's bigint cast forever: dropped, not fatal
    assert (res.outcome, res.keys, res.applied, res.dropped) == ("applied", 2, 1, 4)
    assert (await column(engine, "posts", "views"))[ids[0]] == 2
    async with engine.connect() as conn:
        row = (await conn.execute(text("SELECT applied, dropped FROM counter_batches"))).one()
    assert tuple(row) == (1, 1)


async def test_ids_spread_over_shards_and_one_update_per_batch(redis, engine, posts):
    ids = await posts(400)
    await ingest(redis, ids)
    per_shard = Counter(buffer.shard_keys("post", "views", i, SHARDS).shard for i in ids)
    assert len(per_shard) == SHARDS and min(per_shard.values()) > 50
    results = await flush_everything(redis, engine)
    # one batch (one ledger row, one UPDATE) per non-empty shard, not one per key
    assert len([r for r in results if r.outcome == "applied"]) == SHARDS
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM counter_batches"))).scalar() == SHARDS


async def test_large_batch_uses_hscan_and_never_keys(column, redis, engine, posts):
    ids = await posts(20_000)
    sk = ShardKeys("post", "views", 0)
    mapping = {str(i): random.randint(1, 5) for i in ids}
    await redis.hset(sk.live, mapping=mapping)
    await redis.config_resetstat()
    res = await flush_shard(redis, engine, sk)
    assert res.applied == 20_000
    stats = await redis.info("commandstats")
    assert "cmdstat_keys" not in stats and "cmdstat_hgetall" not in stats
    assert "cmdstat_hscan" in stats
    assert sum((await column(engine, "posts", "views")).values()) == sum(mapping.values())


async def test_two_flushers_never_work_the_same_shard(column, redis, engine, posts):
    import asyncio

    ids = await posts(200)
    await ingest(redis, ids, per_id=2)
    a, b = await asyncio.gather(flush_everything(redis, engine), flush_everything(redis, engine))
    done = [r.counter for r in a + b if r.outcome != "empty"]
    assert len(done) == len(set(done))
    assert await column(engine, "posts", "views") == dict.fromkeys(ids, 2)


async def test_database_down_fails_loudly_and_keeps_the_batch(redis, posts, settings):
    from sqlalchemy.ext.asyncio import create_async_engine

    ids = await posts(3)
    await ingest(redis, ids)
    dead = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:1/none")
    with pytest.raises(FlushFailed):
        await flush_all(redis, dead, shards=SHARDS, owner="t", lease_ttl=5)
    await dead.dispose()
    kept = [sk for sk in all_shards(SHARDS) if await redis.exists(sk.inflight)]
    assert kept, "the claimed batch must stay in flight for the next flush"


async def test_a_failed_lane_keeps_its_batches_in_flight_while_the_other_commits(
    column, redis, engine, posts
):
    """flush_many applies batches in LANES transactions side by side: one failing must neither
    ack its batches (they were rolled back) nor keep the other lane from committing."""
    from celery_stack_counters.flush import LANES, flush_many

    assert LANES >= 2
    ids = await posts(400)
    await ingest(redis, ids, per_id=2)
    shards = [sk for sk in all_shards(SHARDS) if await redis.exists(sk.live)]
    assert len(shards) == SHARDS  # every post:views shard has views
    failed = False

    async def fail_first_lane(step):
        nonlocal failed
        if step == "applied" and not failed:
            failed = True
            raise Crash(step)

    with pytest.raises(Crash), HOOKS.installed("flush", fail_first_lane):
        await flush_many(redis, engine, shards)
    in_flight = [sk for sk in shards if await redis.exists(sk.inflight)]
    async with engine.connect() as conn:
        ledger = {r[0] for r in await conn.execute(text("SELECT counter FROM counter_batches"))}
    # the failed lane's batch(es) stay in flight and out of the ledger; the other lane's are
    # committed and acked
    assert in_flight and len(in_flight) < SHARDS
    assert ledger == {sk.name for sk in shards} - {sk.name for sk in in_flight}
    await flush_everything(redis, engine)
    assert await column(engine, "posts", "views") == dict.fromkeys(ids, 2)
