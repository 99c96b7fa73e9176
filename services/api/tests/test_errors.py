"""Which failures are outages (503 + Retry-After) and which are not, for every route."""

from __future__ import annotations

import asyncio
import contextlib
import struct

import asyncpg
import httpx
import pytest
import redis.exceptions
import sqlalchemy.exc
from sqlalchemy import text

from celery_stack_api import errors
from celery_stack_api.deps import StateDep
from celery_stack_api.main import create_app
from celery_stack_core.config import DEV_USER_TOKEN
from celery_stack_core.outage import is_outage


def _pg_error(cls, message="x"):
    return cls(message)


@pytest.mark.parametrize(
    ("exc", "outage"),
    [
        (ConnectionRefusedError(111, "refused"), True),
        (ConnectionResetError(104, "reset"), True),
        (TimeoutError(), True),
        (OSError("Multiple exceptions: [Errno 111] Connect call failed"), True),
        (_pg_error(asyncpg.exceptions.CannotConnectNowError), True),  # 57P03
        (_pg_error(asyncpg.exceptions.AdminShutdownError), True),  # 57P01
        (_pg_error(asyncpg.exceptions.ConnectionDoesNotExistError), True),
        (_pg_error(asyncpg.exceptions.TooManyConnectionsError), True),  # 53300
        (_pg_error(asyncpg.exceptions.QueryCanceledError), True),  # 57014 statement timeout
        (_pg_error(asyncpg.exceptions.DiskFullError), False),  # 53100: not a connection failure
        (_pg_error(asyncpg.exceptions.OutOfMemoryError), False),  # 53200
        (redis.exceptions.ConnectionError("down"), True),
        (redis.exceptions.BusyLoadingError("loading"), True),
        (redis.exceptions.TimeoutError(), True),
        (sqlalchemy.exc.TimeoutError("pool"), True),
        (_pg_error(asyncpg.exceptions.CharacterNotInRepertoireError), False),  # NUL: 22021
        (_pg_error(asyncpg.exceptions.UniqueViolationError), False),
        (_pg_error(asyncpg.exceptions.UndefinedColumnError), False),
        (sqlalchemy.exc.ProgrammingError("SELECT", {}, Exception("syntax")), False),
        (redis.exceptions.ResponseError("WRONGTYPE"), False),
        (redis.exceptions.DataError("bad value"), False),
        (UnicodeEncodeError("utf-8", "\ud800", 0, 1, "surrogates not allowed"), False),
        (ValueError("x"), False),
    ],
    ids=repr,
)
def test_only_connection_class_failures_are_outages(exc, outage):
    """One rule for the routes and the counters (it was two lists that disagreed on 53xxx)."""
    assert errors.is_unavailable(exc) is outage
    assert is_outage(exc) is outage
    wrapped = sqlalchemy.exc.DBAPIError("SELECT 1", {}, Exception("adapted"))
    wrapped.__cause__ = exc  # as SQLAlchemy's asyncpg adapter chains them
    assert errors.is_unavailable(wrapped) is outage


@contextlib.asynccontextmanager
async def fake_postgres(sqlstate: str, message: str):
    """A server that answers every connection's startup with a FATAL error, as PostgreSQL
    does while it starts (57P03) or shuts down (57P01)."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                (length,) = struct.unpack("!I", await reader.readexactly(4))
                (code,) = struct.unpack("!I", await reader.readexactly(4))
                await reader.readexactly(length - 8)
                if code == 80877103:  # SSLRequest: no
                    writer.write(b"N")
                    await writer.drain()
                    continue
                break
            fields = b"SFATAL\0VFATAL\0C" + sqlstate.encode() + b"\0M" + message.encode() + b"\0\0"
            writer.write(b"E" + struct.pack("!I", len(fields) + 4) + fields)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/x"
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("sqlstate", "message"),
    [
        ("57P03", "the database system is starting up"),
        ("57P01", "terminating connection due to administrator command"),
    ],
)
async def test_postgres_starting_or_stopping_is_503_everywhere(
    settings, redis, client_for, sqlstate, message
):
    """Was a 500 for ~0.3 s of every PostgreSQL restart (CannotConnectNowError unmapped)."""
    async with fake_postgres(sqlstate, message) as url:
        down = settings.replace(DATABASE_URL=url)
        async with client_for(down) as api:
            for method, path in [
                ("GET", "/api/v1/posts/5/counts"),
                ("PUT", "/api/v1/posts/5/like"),
                ("POST", "/api/v1/posts"),
                ("GET", "/api/v1/scans"),
            ]:
                r = await api.request(
                    method, path, json={"title": "t"} if method == "POST" else None
                )
                assert r.status_code == 503, (path, r.text)
                assert r.headers["retry-after"] == "5" and isinstance(r.json()["detail"], str)


async def test_a_data_error_from_the_database_is_422_not_an_outage(settings, clean_db, redis):
    """A NUL reaching PostgreSQL (asyncpg refuses it) was a 503 with Retry-After: a client
    retried forever and the logs cried outage. Any route, even one added later, gets 422."""
    app = create_app(settings)

    @app.post("/api/v1/test-store-nul")
    async def store_nul(state: StateDep) -> dict[str, str]:
        async with state.engine.connect() as conn:
            await conn.execute(text("SELECT CAST(:v AS text)"), {"v": "a\x00b"})
        return {}

    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://api",
            headers={"Authorization": f"Bearer {DEV_USER_TOKEN}"},
        ) as api:
            r = await api.post("/api/v1/test-store-nul")
    assert r.status_code == 422 and "retry-after" not in r.headers, r.text


async def test_a_bug_is_a_500_not_an_outage(settings, clean_db, redis):
    app = create_app(settings)

    @app.get("/api/v1/test-bug")
    async def bug(state: StateDep) -> dict[str, str]:
        async with state.engine.connect() as conn:
            await conn.execute(text("SELECT no_such_column FROM posts"))
        return {}

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as api:
            r = await api.get("/api/v1/test-bug")
    assert r.status_code == 500


@pytest.mark.parametrize(
    "body",
    [
        b'{"viewer_id": "a\\ud800b"}',
        b'{"viewer_id": "\\udfff"}',
        b'{"viewer_id": "a\\u0000"}',
        b'{"viewer_id": "ok", "\\ud800": 1}',
    ],
)
async def test_lone_surrogate_or_nul_is_a_clear_422_on_the_fast_path_too(api, redis, body):
    """A lone surrogate was a 500 (the 422 handler echoed it and UTF-8 encoding raised); a NUL
    viewer id was accepted while a NUL title was refused: text is valid Unicode without NUL."""
    pid = (await api.post("/api/v1/posts", json={"title": "t"})).json()["id"]
    await api.post(f"/api/v1/posts/{pid}/views")  # cached id: the fast path would answer
    keys = sorted([k async for k in redis.scan_iter()])
    r = await api.post(
        f"/api/v1/posts/{pid}/views", content=body, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert "Unicode" in r.json()["detail"] and r.json()["errors"][0]["type"] == "invalid_text"
    assert sorted([k async for k in redis.scan_iter()]) == keys
    counts = (await api.get(f"/api/v1/posts/{pid}/counts")).json()
    assert counts["counts"]["views"] == 1


async def test_paired_surrogates_are_ordinary_text(api, clean_db):
    r = await api.post(
        "/api/v1/posts",
        content=b'{"title": "smile \\ud83d\\ude00"}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 201, r.text


async def test_a_body_that_is_not_utf8_is_400_as_documented(api, clean_db):
    r = await api.post(
        "/api/v1/posts",
        content=b'{"title": "\xff\xfe"}',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and isinstance(r.json()["detail"], str)
    op = (await api.get("/openapi.json")).json()["paths"]["/api/v1/posts"]["post"]
    assert str(r.status_code) in op["responses"]


@pytest.mark.parametrize(
    ("path", "allow"),
    [
        ("/api/v1/posts/1/like", "DELETE, PUT"),
        ("/api/v1/scans", "GET, POST"),
        ("/api/v1/scans/00000000-0000-0000-0000-000000000000", "DELETE, GET"),
        ("/api/v1/examples/coupons", "GET, POST"),
    ],
)
async def test_a_405_names_every_method_of_the_path(api, path, allow):
    """Starlette's 405 named only the first matching route's methods (`Allow: PUT` on a path
    that also takes DELETE; found by schemathesis' allow_header_conformance): now the methods
    the OpenAPI document gives the path."""
    r = await api.request("PATCH", path)
    assert r.status_code == 405 and r.headers["allow"] == allow, r.headers
    assert isinstance(r.json()["detail"], str)
