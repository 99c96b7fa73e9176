"""Field report 000's view-count sync, for bench_flush only (never product code).

Both functions are synchronous, as the report's Celery task was: SQLAlchemy ORM session on
psycopg, redis-py, one key per post (`views:post:{id}`, a string INCRBY'd by ingest).

- `flush_as_written`: the report's code path. A lock (SET NX EX 600: the 10-minute TTL it
  names), `KEYS views:post:*`, then per key GET, an ORM UPDATE through the session and DEL
  (before anything is committed: the lost-count bug), errors counted and the loop continued;
  one `db.commit()` after the loop.
- `flush_fixed`: the report's own proposed fix, its three suggestions done well: SCAN with
  COUNT 100 (its snippet), the values of each SCAN batch with one MGET, one bulk UPDATE
  (`UPDATE ... FROM unnest`, the "more complex logic" its snippet leaves open), COMMIT, then
  DEL of the synced keys. (Increments that land between the read and the DEL are lost; the
  report's fix does not address that, and the bench does not send any meanwhile.)
"""

from __future__ import annotations

import functools
import logging

import redis
from sqlalchemy import Engine, bindparam, create_engine, text, update
from sqlalchemy.orm import Session

from bench.common import BenchEnv
from celery_stack_core.models import Post

log = logging.getLogger(__name__)
PATTERN = "views:post:*"
LOCK = "lock:sync_view_counts"


@functools.cache
def _engine(database_url: str) -> Engine:
    return create_engine(database_url.replace("+asyncpg", "+psycopg", 1), pool_size=2)


def _redis(env: BenchEnv) -> redis.Redis:
    return redis.Redis.from_url(env.redis_url)  # bytes, as the report's client returned


async def load(redis_url: str, deltas: dict[int, int]) -> None:
    """One key per object, as report 000's ingest wrote them (not timed)."""
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(redis_url)
    try:
        async with r.pipeline(transaction=False) as pipe:
            for n, (target_id, delta) in enumerate(deltas.items(), 1):
                pipe.incrby(f"views:post:{target_id}", delta)
                if n % 5000 == 0:
                    await pipe.execute()
            await pipe.execute()
    finally:
        await r.aclose()


def flush_as_written(env: BenchEnv) -> int:
    r = _redis(env)
    if not r.set(LOCK, "1", nx=True, ex=600):
        raise RuntimeError("lock held")
    synced = failed = 0
    try:
        with Session(_engine(env.database_url)) as db:
            for key in r.keys(PATTERN):  # report 000 as written: KEYS
                try:
                    value = r.get(key)
                    if value is None:
                        continue
                    post_id = int(key.decode().rsplit(":", 1)[1])
                    db.execute(
                        update(Post).where(Post.id == post_id).values(views=Post.views + int(value))
                    )
                    r.delete(key)  # before the commit: report 000's lost-count bug
                    synced += 1
                except Exception as exc:  # the report's loop: count, log and continue
                    failed += 1
                    log.error("sync failed for %s: %r", key, exc)
            db.commit()  # once, after the loop
    finally:
        r.delete(LOCK)
        r.close()
    if failed:
        raise RuntimeError(f"report 000 as written: {failed} keys failed")
    return synced


def flush_fixed(env: BenchEnv) -> int:
    r = _redis(env)
    if not r.set(LOCK, "1", nx=True, ex=600):
        raise RuntimeError("lock held")
    try:
        keys: list[bytes] = []
        values: list[bytes | None] = []
        cursor = 0
        while True:  # the report's SCAN snippet, plus one MGET per batch
            cursor, batch = r.scan(cursor, match=PATTERN, count=100)
            if batch:
                keys.extend(batch)
                values.extend(r.mget(batch))
            if cursor == 0:
                break
        pairs = sorted(
            (int(k.decode().rsplit(":", 1)[1]), int(v))
            for k, v in zip(keys, values, strict=True)
            if v is not None
        )
        with Session(_engine(env.database_url)) as db:
            # the report's "bulk update", in the one statement that does it
            db.execute(
                text(
                    "UPDATE posts AS t SET views = t.views + d.delta "
                    "FROM unnest(CAST(:ids AS bigint[]), CAST(:deltas AS bigint[])) "
                    "AS d(id, delta) WHERE t.id = d.id"
                ).bindparams(bindparam("ids"), bindparam("deltas")),
                {"ids": [p[0] for p in pairs], "deltas": [p[1] for p in pairs]},
            )
            db.commit()
        for start in range(0, len(keys), 100):  # delete after commit
            r.delete(*keys[start : start + 100])
        return len(pairs)
    finally:
        r.delete(LOCK)
        r.close()
