"""increment_many (the bulk ingest) writes exactly what single increments write.

Its script receives each shard's ids and deltas packed in one string and parses them in Lua,
where numbers are doubles: the ids must stay text (2**63 - 1 as a double is 2**63), and every
shard's since-stamp must be set as a single view sets it.
"""

from celery_stack_core import buffer, keys

SHARDS = 4
DELTAS = {
    "post": {1: 3, 7: 1, 10**15 + 1: 2, 2**53 + 1: 5, 2**63 - 1: 1_000_000, 42: 1},
    "article": {1: 9, 2**63 - 2: 4},
}


async def _buffers(redis) -> dict[str, dict[str, str]]:
    out = {}
    async for k in redis.scan_iter(f"{keys.PREFIX}:cnt:*"):
        kind = await redis.type(k)
        out[k] = await redis.hgetall(k) if kind == "hash" else "stamp"
    return out


async def test_increment_many_equals_single_increments(redis):
    for target, per_id in DELTAS.items():
        for target_id, delta in per_id.items():
            await buffer.increment(redis, target, "views", target_id, shards=SHARDS, delta=delta)
    singles = await _buffers(redis)
    await redis.flushdb()
    await buffer.increment_many(redis, "views", DELTAS, shards=SHARDS)
    assert await _buffers(redis) == singles
    top = keys.ShardKeys("post", "views", keys.shard_of(2**63 - 1, SHARDS)).live
    assert await redis.hget(top, str(2**63 - 1)) == "1000000"


async def test_increment_many_adds_to_what_is_there(redis):
    await buffer.increment_many(redis, "views", {"post": {5: 2}}, shards=SHARDS)
    await buffer.increment_many(redis, "views", {"post": {5: 3, 6: 1}}, shards=SHARDS)
    live = keys.ShardKeys("post", "views", keys.shard_of(5, SHARDS)).live
    assert await redis.hget(live, "5") == "5"
