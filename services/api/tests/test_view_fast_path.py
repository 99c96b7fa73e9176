"""The view fast path (fastpath.py) answers exactly what the FastAPI route answers.

Every request below goes to two apps, one with the fast path and one without, on the same
Redis and database; status, body and what reached Redis must be identical.
"""

import contextlib

import httpx
import pytest

from celery_stack_api.main import create_app
from celery_stack_core import keys, metrics
from celery_stack_core.config import DEV_ADMIN_TOKEN, DEV_USER_TOKEN

AUTH = {"Authorization": f"Bearer {DEV_USER_TOKEN}"}
JSON = {"content-type": "application/json"}

CASES = [
    ("no body", "/api/v1/posts/{id}/views", {}, b"", AUTH),
    ("viewer", "/api/v1/posts/{id}/views", {}, b'{"viewer_id": "v1"}', {**AUTH, **JSON}),
    ("empty object", "/api/v1/posts/{id}/views", {}, b"{}", {**AUTH, **JSON}),
    ("null viewer", "/api/v1/posts/{id}/views", {}, b'{"viewer_id": null}', {**AUTH, **JSON}),
    ("empty viewer", "/api/v1/posts/{id}/views", {}, b'{"viewer_id": ""}', {**AUTH, **JSON}),
    (
        "long viewer",
        "/api/v1/posts/{id}/views",
        {},
        b'{"viewer_id": "' + b"x" * 129 + b'"}',
        {**AUTH, **JSON},
    ),
    ("number viewer", "/api/v1/posts/{id}/views", {}, b'{"viewer_id": 5}', {**AUTH, **JSON}),
    ("extra key", "/api/v1/posts/{id}/views", {}, b'{"viewer_id": "a", "x": 1}', {**AUTH, **JSON}),
    ("broken json", "/api/v1/posts/{id}/views", {}, b"{nope", {**AUTH, **JSON}),
    ("array body", "/api/v1/posts/{id}/views", {}, b"[]", {**AUTH, **JSON}),
    ("text body", "/api/v1/posts/{id}/views", {}, b"hello", {**AUTH, "content-type": "text/plain"}),
    ("no token", "/api/v1/posts/{id}/views", {}, b"", {}),
    ("bad token", "/api/v1/posts/{id}/views", {}, b"", {"Authorization": "Bearer nope"}),
    (
        "admin token",
        "/api/v1/posts/{id}/views",
        {},
        b"",
        {"Authorization": f"Bearer {DEV_ADMIN_TOKEN}"},
    ),
    ("basic auth", "/api/v1/posts/{id}/views", {}, b"", {"Authorization": "Basic eDp5"}),
    ("query string", "/api/v1/posts/{id}/views", {"a": "1"}, b"", AUTH),
    ("leading zero", "/api/v1/posts/0{id}/views", {}, b"", AUTH),
    ("id too large", "/api/v1/posts/9223372036854775808/views", {}, b"", AUTH),
    ("unknown id", "/api/v1/posts/999999/views", {}, b"", AUTH),
    ("article", "/api/v1/articles/{aid}/views", {}, b"", AUTH),
    ("comment", "/api/v1/post-comments/{id}/views", {}, b"", AUTH),
    ("trailing slash", "/api/v1/posts/{id}/views/", {}, b"", AUTH),
]

# The cases the fast path itself must answer (its second request: the first fills the
# existence cache); every other case must be passed on to FastAPI.
FAST = {"no body", "viewer", "empty object", "null viewer", "article", "admin token"}


def fast_answers() -> float:
    return sum(metrics.VIEW_FAST_PATH.labels(t)._value.get() for t in ("post", "article"))


@contextlib.asynccontextmanager
async def client(settings, fast):
    app = create_app(settings, view_fast_path=fast)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://api"
        ) as c:
            yield c


@pytest.mark.parametrize(
    ("name", "path", "params", "body", "headers"), CASES, ids=[c[0] for c in CASES]
)
async def test_fast_path_answers_like_the_route(
    settings, clean_db, redis, name, path, params, body, headers
):
    outcomes = []
    for fast in (True, False):
        await redis.flushdb()
        async with client(settings, fast) as c:
            h = {**AUTH, "X-User-Id": "u"}
            post = (await c.post("/api/v1/posts", json={"title": "p"}, headers=h)).json()["id"]
            article = (await c.post("/api/v1/articles", json={"title": "a"}, headers=h)).json()[
                "id"
            ]
            url = path.format(id=post, aid=article)
            # twice: the first request fills the existence cache, the second may take the fast path
            before = fast_answers()
            answers = [
                await c.post(url, params=params, content=body, headers=headers) for _ in range(2)
            ]
            answered_fast = fast_answers() - before
        assert answered_fast == (1 if fast and name in FAST else 0), (name, fast)
        # ids differ between the two runs (new rows): compare what was buffered, per target type
        buffered: dict[str, int] = {}
        async for k in redis.scan_iter(f"{keys.PREFIX}:cnt:*:live"):
            kind = k.split("{")[1].split(":")[0]
            buffered[kind] = buffered.get(kind, 0) + sum(
                int(v) for v in (await redis.hgetall(k)).values()
            )
        uniques = sorted([k async for k in redis.scan_iter(f"{keys.PREFIX}:uv:*")])
        outcomes.append(([(a.status_code, a.text) for a in answers], buffered, len(uniques)))
    assert outcomes[0] == outcomes[1], name
