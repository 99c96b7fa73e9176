"""Counters while PostgreSQL crash-restarts under load (issue 14): views keep flowing (Redis is
up), likes and counts answer 503 with Retry-After during the outage and only then, never 500.

The test's own PostgreSQL (a throwaway server) is stopped with `-m immediate` and started again
(crash recovery: connections are refused, then 57P03 "starting up") while clients hammer the
in-process app. The classification of each failure class is checked on real exceptions below.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy import text

from celery_stack_api.counting import Unavailable, unavailable_on_outage
from celery_stack_api.main import create_app
from celery_stack_core.config import DEV_USER_TOKEN
from celery_stack_core.db import make_engine
from celery_stack_core.migrate import upgrade
from celery_stack_core.outage import is_outage
from celery_stack_devstack.servers import PostgresServer

RESTARTS = 3


@pytest.fixture
def own_pg():
    base = Path(tempfile.mkdtemp(prefix="celery-stack-pgrestart-"))
    base.chmod(0o755)
    pg = PostgresServer(base / "pg", fsync=False).start()
    yield pg
    pg.stop("immediate")
    shutil.rmtree(base, ignore_errors=True)


async def test_views_flow_and_the_rest_is_503_while_postgres_restarts(own_pg, settings, redis):
    url = own_pg.create_database("restart")
    await asyncio.to_thread(upgrade, url)
    s = settings.replace(DATABASE_URL=url)
    engine = make_engine(s)
    async with engine.begin() as conn:
        ids = [
            r[0]
            for r in await conn.execute(
                text(
                    "INSERT INTO posts (author_id, title) SELECT 'a', 't' FROM generate_series(1, 40)"
                    " RETURNING id"
                )
            )
        ]
    await engine.dispose()
    app = create_app(s)
    seen: dict[str, Counter[int]] = {"view": Counter(), "like": Counter(), "counts": Counter()}
    bad: list[str] = []
    stop = asyncio.Event()
    headers = {"Authorization": f"Bearer {DEV_USER_TOKEN}", "X-User-Id": "u1"}

    async def client(n: int, api: httpx.AsyncClient) -> None:
        i = 0
        while not stop.is_set():
            i += 1
            # ids[:10] are in the existence cache (viewed before the outage), the rest never were
            pid = ids[(n * 7 + i) % len(ids)]
            for kind, req in (
                ("view", api.post(f"/api/v1/posts/{pid}/views")),
                ("like", api.put(f"/api/v1/posts/{pid}/like")),
                ("counts", api.get(f"/api/v1/posts/{pid}/counts")),
            ):
                r = await req
                seen[kind][r.status_code] += 1
                if r.status_code == 503 and r.headers.get("retry-after") is None:
                    bad.append(f"{kind}: 503 without Retry-After")
                if r.status_code not in (200, 202, 503):
                    bad.append(f"{kind} {pid}: {r.status_code} {r.text[:200]}")
            await asyncio.sleep(0)

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://api", headers=headers
        ) as api:
            for pid in ids[:10]:
                assert (await api.post(f"/api/v1/posts/{pid}/views")).status_code == 202
            clients = [asyncio.create_task(client(n, api)) for n in range(6)]
            for _ in range(RESTARTS):
                await asyncio.sleep(0.3)
                await asyncio.to_thread(own_pg.restart_immediate)
            await asyncio.sleep(0.5)
            stop.set()
            await asyncio.gather(*clients)
    assert not bad, bad[:10]
    assert set(seen["view"]) == {202}, seen  # Redis was up the whole time: every view accepted
    assert seen["like"][503] and seen["counts"][503], seen  # the outage was really hit
    assert seen["like"][200] and seen["counts"][200], seen  # and requests succeeded around it


async def _pg_error(sqlstate_cls: type[Exception]) -> Exception:
    """A real asyncpg server error of that class, wrapped by SQLAlchemy as the app sees it."""
    import sqlalchemy.exc

    err = sqlstate_cls("from the server")
    return sqlalchemy.exc.DBAPIError("SELECT 1", {}, err, connection_invalidated=False)


@pytest.mark.parametrize(
    ("exc_cls", "outage"),
    [
        (asyncpg.exceptions.CannotConnectNowError, True),  # 57P03 starting up
        (asyncpg.exceptions.AdminShutdownError, True),  # 57P01
        (asyncpg.exceptions.CrashShutdownError, True),  # 57P02
        (asyncpg.exceptions.ConnectionDoesNotExistError, True),  # 08003
        (asyncpg.exceptions.TooManyConnectionsError, True),  # 53300
        (asyncpg.exceptions.CharacterNotInRepertoireError, False),  # a NUL in text: data
        (asyncpg.exceptions.UniqueViolationError, False),
        (asyncpg.exceptions.NumericValueOutOfRangeError, False),
    ],
)
async def test_only_connection_class_failures_are_outages(exc_cls, outage):
    wrapped = await _pg_error(exc_cls)
    assert is_outage(wrapped) is outage
    assert is_outage(exc_cls("bare")) is outage
    with pytest.raises(Unavailable if outage else type(wrapped)):
        with unavailable_on_outage("PostgreSQL"):
            raise wrapped


@pytest.mark.parametrize(
    "exc",
    [ConnectionRefusedError(111, "refused"), ConnectionResetError(), TimeoutError()],
)
def test_socket_failures_are_outages(exc):
    assert is_outage(exc)
