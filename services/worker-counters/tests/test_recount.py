"""Coalesced recounts and reconciliation from the source-of-truth tables."""

import time

from sqlalchemy import text

from celery_stack_core import buffer, keys
from celery_stack_counters.recount import drain_dirty, reconcile


async def like(engine, user, target_type, target_id, kind="like"):
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO user_actions (user_id, target_type, target_id, kind) "
                "VALUES (:u, :t, :i, :k) ON CONFLICT DO NOTHING"
            ),
            {"u": user, "t": target_type, "i": target_id, "k": kind},
        )


async def test_drain_recounts_dirty_targets_in_one_batch(column, redis, engine, posts):
    ids = await posts(3)
    for u in range(5):
        await like(engine, f"u{u}", "post", ids[0])
    await like(engine, "u1", "post", ids[1], "collect")
    await like(engine, "u1", "post", ids[1], "share")
    async with engine.begin() as conn:
        await conn.execute(
            text("INSERT INTO post_comments (post_id, author_id, body) VALUES (:p, 'a', 'b')"),
            {"p": ids[2]},
        )
    for i in ids:
        await buffer.mark_dirty(redis, "post", i)
        await buffer.mark_dirty(redis, "post", i)  # coalesced: a set, not a queue
    assert await redis.scard(keys.DIRTY) == 3
    n = await drain_dirty(redis, engine, batch_size=100, claim_timeout=60)
    assert n == 3
    assert (await column(engine, "posts", "likes"))[ids[0]] == 5
    assert (await column(engine, "posts", "collects"))[ids[1]] == 1
    assert (await column(engine, "posts", "shares"))[ids[1]] == 1
    assert (await column(engine, "posts", "comments"))[ids[2]] == 1
    assert await redis.scard(keys.DIRTY) == 0 and await redis.zcard(keys.DIRTY_CLAIMED) == 0


async def test_comment_likes_are_recounted(column, redis, engine, posts):
    [p] = await posts(1)
    async with engine.begin() as conn:
        cid = (
            await conn.execute(
                text(
                    "INSERT INTO post_comments (post_id, author_id, body) VALUES (:p, 'a', 'b') RETURNING id"
                ),
                {"p": p},
            )
        ).scalar()
    await like(engine, "u1", "post_comment", cid)
    await like(engine, "u2", "post_comment", cid)
    await buffer.mark_dirty(redis, "post_comment", cid)
    await drain_dirty(redis, engine, batch_size=10, claim_timeout=60)
    assert (await column(engine, "post_comments", "likes"))[cid] == 2


async def test_claims_of_a_dead_drainer_are_retried(column, redis, engine, posts):
    [p] = await posts(1)
    await like(engine, "u1", "post", p)
    # a drainer claimed the mark and died before its commit (the claim is 2 minutes old)
    await redis.zadd(keys.DIRTY_CLAIMED, {f"post:{p}": int(time.time() * 1000) - 120_000})
    assert await drain_dirty(redis, engine, batch_size=10, claim_timeout=60) == 1
    assert (await column(engine, "posts", "likes"))[p] == 1
    # a fresh claim (a live drainer at work) is left alone
    await redis.zadd(keys.DIRTY_CLAIMED, {f"post:{p}": int(time.time() * 1000)})
    assert await drain_dirty(redis, engine, batch_size=10, claim_timeout=60) == 0


async def test_reconcile_finds_and_fixes_drift(column, redis, engine, posts):
    ids = await posts(30)
    for i in ids[:10]:
        await like(engine, "u1", "post", i)
    async with engine.begin() as conn:  # drift: counts nobody marked dirty, and a corrupted one
        await conn.execute(text("UPDATE posts SET shares = 9 WHERE id = :i"), {"i": ids[20]})
    drift = await reconcile(engine, batch_size=7)
    assert drift["post"] == 11
    likes = await column(engine, "posts", "likes")
    assert [likes[i] for i in ids[:10]] == [1] * 10
    assert (await column(engine, "posts", "shares"))[ids[20]] == 0
    assert (await reconcile(engine, batch_size=7))["post"] == 0  # nothing left to fix
