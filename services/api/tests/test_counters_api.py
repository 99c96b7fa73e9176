"""The counters endpoints on the real app, real Redis and real PostgreSQL."""

import pytest
from sqlalchemy import text

from celery_stack_core import keys
from celery_stack_core.hooks import HOOKS
from celery_stack_counters.flush_all import flush_all
from celery_stack_counters.recount import drain_dirty


async def db_views(engine, post_id):
    async with engine.connect() as conn:
        return (
            await conn.execute(text("SELECT views FROM posts WHERE id = :i"), {"i": post_id})
        ).scalar()


async def test_view_is_buffered_with_no_database_write(api, post_id, redis, engine):
    for _ in range(3):
        r = await api.post(f"/api/v1/posts/{post_id}/views")
        assert r.status_code == 202 and r.json()["path"] == "buffered"
    assert await db_views(engine, post_id) == 0  # nothing written on the hot path
    counts = (await api.get(f"/api/v1/posts/{post_id}/counts")).json()
    assert counts["counts"]["views"] == 3


async def test_counts_are_db_plus_live_plus_inflight_once(api, post_id, redis, engine, settings):
    for _ in range(2):
        await api.post(f"/api/v1/posts/{post_id}/views")
    await flush_all(redis, engine, shards=settings.counters.shards, owner="t", lease_ttl=5)
    await api.post(f"/api/v1/posts/{post_id}/views")
    body = (await api.get(f"/api/v1/posts/{post_id}/counts")).json()
    assert body["counts"]["views"] == 3
    assert await db_views(engine, post_id) == 2


async def test_committed_inflight_batch_is_not_counted_twice(api, post_id, redis, engine, settings):
    from celery_stack_core.buffer import shard_keys
    from celery_stack_counters.flush import STEPS, flush_shard

    await api.post(f"/api/v1/posts/{post_id}/views")
    sk = shard_keys("post", "views", post_id, settings.counters.shards)

    async def stop_after_commit(step):
        if step == "committed":
            raise RuntimeError("crash before ack")

    assert "committed" in STEPS
    with pytest.raises(RuntimeError), HOOKS.installed("flush", stop_after_commit):
        await flush_shard(redis, engine, sk)
    assert await redis.exists(sk.inflight)  # still in flight, but already in the DB
    body = (await api.get(f"/api/v1/posts/{post_id}/counts")).json()
    assert body["counts"]["views"] == 1


async def test_unique_viewers(api, post_id):
    for viewer in ("a", "b", "a", "c", "a"):
        await api.post(f"/api/v1/posts/{post_id}/views", json={"viewer_id": viewer})
    body = (await api.get(f"/api/v1/posts/{post_id}/counts")).json()
    assert body["unique_viewers"] == 3 and body["counts"]["views"] == 5


async def test_likes_are_idempotent_and_recounted(api, post_id, redis, engine):
    r1 = await api.put(f"/api/v1/posts/{post_id}/like")
    r2 = await api.put(f"/api/v1/posts/{post_id}/like")
    assert r1.json() == {"kind": "like", "active": True, "changed": True}
    assert r2.json()["changed"] is False
    await api.put(f"/api/v1/posts/{post_id}/like", headers={"X-User-Id": "u2"})
    await api.put(f"/api/v1/posts/{post_id}/collect")
    await api.post(f"/api/v1/posts/{post_id}/share")
    assert await redis.smembers(keys.DIRTY) == {f"post:{post_id}"}
    await drain_dirty(redis, engine, batch_size=100, claim_timeout=60)
    counts = (await api.get(f"/api/v1/posts/{post_id}/counts")).json()["counts"]
    assert (counts["likes"], counts["collects"], counts["shares"]) == (2, 1, 1)
    r = await api.delete(f"/api/v1/posts/{post_id}/like")
    assert r.json() == {"kind": "like", "active": False, "changed": True}
    await drain_dirty(redis, engine, batch_size=100, claim_timeout=60)
    assert (await api.get(f"/api/v1/posts/{post_id}/counts")).json()["counts"]["likes"] == 1


async def test_comments_and_comment_likes(api, post_id, redis, engine):
    c = await api.post(f"/api/v1/posts/{post_id}/comments", json={"body": "nice"})
    assert c.status_code == 201
    cid = c.json()["id"]
    assert (await api.put(f"/api/v1/post-comments/{cid}/like")).status_code == 200
    assert (await api.put(f"/api/v1/post-comments/{cid}/collect")).status_code == 404
    await drain_dirty(redis, engine, batch_size=100, claim_timeout=60)
    assert (await api.get(f"/api/v1/posts/{post_id}/counts")).json()["counts"]["comments"] == 1
    assert (await api.get(f"/api/v1/post-comments/{cid}/counts")).json()["counts"] == {"likes": 1}
    assert (
        await api.delete(f"/api/v1/post-comments/{cid}", headers={"X-User-Id": "other"})
    ).status_code == 404
    assert (await api.delete(f"/api/v1/post-comments/{cid}")).status_code == 200
    await drain_dirty(redis, engine, batch_size=100, claim_timeout=60)
    assert (await api.get(f"/api/v1/posts/{post_id}/counts")).json()["counts"]["comments"] == 0


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("post", "/api/v1/posts/999999/views", {}, 404),
        ("get", "/api/v1/posts/999999/counts", {}, 404),
        ("put", "/api/v1/posts/999999/like", {}, 404),
        ("post", "/api/v1/posts/999999/comments", {"json": {"body": "x"}}, 404),
        ("post", "/api/v1/posts/0/views", {}, 422),
        ("post", "/api/v1/posts/-4/views", {}, 422),
        ("post", "/api/v1/posts/abc/views", {}, 422),
        ("post", "/api/v1/posts/99999999999999999999999/views", {}, 422),
        ("post", "/api/v1/widgets/1/views", {}, 422),
        ("post", "/api/v1/post-comments/1/views", {}, 422),
        (
            "post",
            "/api/v1/posts/1/views",
            {"content": b"{not json", "headers": {"content-type": "application/json"}},
            422,
        ),
        ("post", "/api/v1/posts/1/views", {"json": {"viewer_id": ""}}, 422),
        ("post", "/api/v1/posts/1/views", {"json": {"viewer_id": "x" * 500}}, 422),
        (
            "post",
            "/api/v1/posts/1/views",
            {"content": b"x" * 70_000, "headers": {"content-type": "application/json"}},
            413,
        ),
        ("put", "/api/v1/posts/1/like", {"headers": {"X-User-Id": "bad id!"}}, 422),
        ("post", "/api/v1/posts", {"json": {"title": ""}}, 422),
        ("post", "/api/v1/posts", {"json": {}}, 422),
    ],
)
async def test_bad_input_is_a_clear_4xx_and_writes_nothing(
    api, post_id, engine, redis, method, path, kwargs, status
):
    path = path.replace("/1/", f"/{post_id}/")
    r = (
        await getattr(api, method)(path, **kwargs)
        if method != "post" or kwargs
        else await api.post(path)
    )
    assert r.status_code == status, r.text
    assert "detail" in r.json()
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT count(*) FROM user_actions"))).scalar() == 0
        assert (await conn.execute(text("SELECT count(*) FROM posts"))).scalar() == 1
    assert await redis.dbsize() == 0


async def test_streamed_oversized_body_is_refused(api, post_id):
    async def chunks():
        for _ in range(100):
            yield b"x" * 1024

    r = await api.post(
        f"/api/v1/posts/{post_id}/views",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413


async def test_auth_and_scopes(api, post_id):
    assert (
        await api.get("/api/v1/posts/1/counts", headers={"Authorization": ""})
    ).status_code == 401
    r = await api.get("/api/v1/posts/1/counts", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert (
        await api.put(f"/api/v1/posts/{post_id}/like", headers={"X-User-Id": ""})
    ).status_code == 422


async def test_redis_down_falls_back_to_one_db_statement(settings, client_for, clean_db, engine):
    from celery_stack_core import metrics

    down = settings.replace(REDIS_URL="redis://127.0.0.1:1/0")
    async with client_for(down) as api:
        pid = (await api.post("/api/v1/posts", json={"title": "t"})).json()["id"]
        before = metrics.FALLBACKS.labels("post", "views")._value.get()
        for _ in range(4):
            r = await api.post(f"/api/v1/posts/{pid}/views")
            assert r.status_code == 202 and r.json()["path"] == "direct"
        assert metrics.FALLBACKS.labels("post", "views")._value.get() == before + 4
        assert await db_views(engine, pid) == 4
        assert (await api.post("/api/v1/posts/999999/views")).status_code == 404
        body = (await api.get(f"/api/v1/posts/{pid}/counts")).json()
        assert body["counts"]["views"] == 4 and body["partial"] is True
        # the like is recorded (source of truth); the recount request is counted as failed
        assert (await api.put(f"/api/v1/posts/{pid}/like")).status_code == 200
        # still ready (views fall back to PostgreSQL), reported as degraded
        r = await api.get("/readyz")
        assert r.status_code == 200 and r.json()["checks"]["redis"].startswith("error")
        assert r.json()["degraded"] is True


async def test_both_stores_down_is_503_with_retry_after(settings, client_for, caplog):
    down = settings.replace(
        REDIS_URL="redis://127.0.0.1:1/0",
        DATABASE_URL="postgresql+asyncpg://postgres@127.0.0.1:1/x",
    )
    async with client_for(down) as api:
        r = await api.post("/api/v1/posts/5/views")
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        r = await api.get("/api/v1/posts/5/counts")
        assert r.status_code == 503 and r.headers["retry-after"]
        r = await api.put("/api/v1/posts/5/like")
        assert r.status_code == 503
        ready = await api.get("/readyz")  # no system of record: not ready
        assert ready.status_code == 503 and ready.headers["retry-after"] == "5"
        assert ready.json()["detail"] and ready.json()["checks"]["database"] != "ok"  # Problem
    # the probe's failures leave a trace in the log, each with its check and error
    failed = {r.check: r.error for r in caplog.records if r.message == "readiness check failed"}
    assert set(failed) == {"database", "redis"} and all(failed.values())


async def test_health_ready_metrics_docs(api):
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    ready = await api.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    await api.post("/api/v1/posts/1/views")
    m = await api.get("/metrics")
    assert "celery_stack_counter_increments_total" in m.text
    assert (await api.get("/openapi.json")).status_code == 200
