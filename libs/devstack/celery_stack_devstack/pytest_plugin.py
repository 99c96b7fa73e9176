"""Fixtures on real servers: a throwaway PostgreSQL and Redis per test session (or the URLs
in TEST_DATABASE_URL / TEST_REDIS_URL), a fresh database migrated to head, and helpers to run
the services as real processes.

Tests never touch data they did not create: the database is new, and Redis is our own server
(or, with TEST_REDIS_URL, the database number it names, which the tests own).
"""

from __future__ import annotations

import asyncio
import inspect
import io
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis.asyncio as aioredis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from celery_stack_core.config import Settings
from celery_stack_core.db import make_engine
from celery_stack_core.migrate import upgrade
from celery_stack_core.models import Base
from celery_stack_core.redis_client import make_async_redis
from celery_stack_devstack.cluster import ScriptSlots
from celery_stack_devstack.servers import PostgresServer, RedisServer, free_port

# Every table of the models (a table added to models.py is emptied too).
TABLES = tuple(t.name for t in Base.metadata.sorted_tables)


@dataclass
class Servers:
    postgres: PostgresServer | None
    redis: RedisServer | None
    database_url: str
    redis_url: str


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    pg: PostgresServer | None = None
    rd: RedisServer | None = None
    # Not under pytest's tmp dir: that one is private to root, and PostgreSQL runs as postgres.
    base = Path(tempfile.mkdtemp(prefix="celery-stack-test-"))
    os.chmod(base, 0o755)  # noqa: S103 - the postgres OS user must traverse it
    try:
        name = f"cs_test_{secrets.token_hex(4)}"
        if url := os.environ.get("TEST_DATABASE_URL", ""):
            import asyncpg

            async def create() -> None:
                conn = await asyncpg.connect(url.replace("+asyncpg", ""))
                # Hand-written: CREATE DATABASE has no SQLAlchemy construct (the name is ours).
                await conn.execute(f'CREATE DATABASE "{name}"')
                await conn.close()

            asyncio.run(create())
            db_url = url.rsplit("/", 1)[0] + f"/{name}"
        else:
            pg = PostgresServer(base / "pg", fsync=False).start()
            db_url = pg.create_database(name)
        if url := os.environ.get("TEST_REDIS_URL", ""):
            redis_url = url
        else:
            rd = RedisServer(base / "redis", appendfsync="everysec").start()
            redis_url = rd.url
        upgrade(db_url)
        yield Servers(pg, rd, db_url, redis_url)
    finally:
        if rd:
            rd.stop()
        if pg:
            pg.stop("immediate")
        shutil.rmtree(base, ignore_errors=True)


# An operator rule valid as data but naming a column the live schema lacks: every process that
# checks the rules at boot (API, maintenance worker) must refuse it with this message, exit 78.
RULE_WITH_A_MISSING_COLUMN = {
    "name": "expire-vouchers",
    "kind": "transition",
    "every": 60,
    "table": "coupons",
    "timestamp": "valid_until",
    "from": ["active"],
    "to": "expired",
}
MISSING_COLUMN_ERROR = (
    "rule 'expire-vouchers': field 'timestamp': table 'coupons' has no column 'valid_until'"
)


def env_for(settings: Settings) -> dict[str, str]:
    """Environment that makes a child process use exactly these settings."""
    return settings.env()


@pytest.fixture(scope="session")
def settings(servers: Servers) -> Settings:
    s = Settings(
        ENVIRONMENT="test",
        DATABASE_URL=servers.database_url,
        REDIS_URL=servers.redis_url,
        METRICS_PORT=0,
        COUNTER_SHARDS=4,
        LOG_LEVEL="INFO",
    )
    # get_settings() in this process and in children reads the same values.
    os.environ.update(env_for(s))
    from celery_stack_core.config import get_settings

    get_settings.cache_clear()
    return s


@pytest.fixture(scope="session")
async def engine(settings: Settings) -> AsyncIterator[AsyncEngine]:
    eng = make_engine(settings)
    yield eng
    await eng.dispose()


@pytest.fixture(scope="session")
async def _redis_client(settings: Settings) -> AsyncIterator[aioredis.Redis]:
    client = make_async_redis(settings)
    yield client
    await client.aclose()


def _timeout_of(request: pytest.FixtureRequest) -> float | None:
    """The test's pytest-timeout budget: its marker, else --timeout, else the ini value."""
    marker = request.node.get_closest_marker("timeout")
    if marker is not None and marker.args:
        return float(marker.args[0])
    value = request.config.getoption("timeout", None) or request.config.getini("timeout")
    return float(value) if value else None


def task_stacks() -> str:
    """Where every task of the running loop waits."""
    out = io.StringIO()
    for task in asyncio.all_tasks():
        task.print_stack(file=out)
    return out.getvalue()


@pytest.fixture(autouse=True)
async def _task_stacks_before_timeout(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """pytest-timeout prints thread stacks only: an async test that hangs shows its event loop
    idle in select and none of its tasks (CI hung once so, with nothing to go on). Just before
    the timeout, print where every task of the loop waits (shown with the failure)."""
    timeout = _timeout_of(request)
    if not inspect.iscoroutinefunction(request.function) or not timeout:
        yield
        return

    def dump() -> None:
        print(f"--- {request.node.nodeid}: tasks at {timeout * 0.9:.0f} s ---", file=sys.stderr)
        print(task_stacks(), file=sys.stderr)

    handle = asyncio.get_running_loop().call_later(timeout * 0.9, dump)
    yield
    handle.cancel()


@pytest.fixture(autouse=True)
def _one_cluster_slot_per_script() -> Iterator[None]:
    """Every Lua script a test calls in this process gets keys of one Redis Cluster slot
    (keys.py's promise; celery_stack_devstack.cluster names the exceptions)."""
    with ScriptSlots().installed() as slots:
        yield
    if slots.crossing:
        pytest.fail(f"scripts called with keys of several Cluster slots: {slots.crossing}")


@pytest.fixture
async def redis(_redis_client: aioredis.Redis) -> aioredis.Redis:
    """The session's Redis, emptied for this test."""
    await _redis_client.flushdb()
    return _redis_client


@pytest.fixture
async def clean_db(engine: AsyncEngine) -> AsyncEngine:
    """The session's database with every table emptied for this test."""
    async with engine.begin() as conn:
        # Hand-written: SQLAlchemy has no TRUNCATE construct (one statement for every table).
        await conn.execute(text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE"))
    return engine


@pytest.fixture
async def api(
    settings: Settings, clean_db: AsyncEngine, redis: aioredis.Redis
) -> AsyncIterator[httpx.AsyncClient]:
    """The real FastAPI app in-process (with its lifespan), as a user-scoped client."""
    from celery_stack_api.main import create_app
    from celery_stack_core.config import DEV_USER_TOKEN

    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport,
            base_url="http://api",
            headers={"Authorization": f"Bearer {DEV_USER_TOKEN}", "X-User-Id": "u1"},
        ) as client:
            yield client


@dataclass
class Service:
    """A service running as a real process."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 30) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            return self.proc.wait()


@pytest.fixture
def start_service(settings: Settings, tmp_path: Path) -> Iterator[object]:
    """start_service(name, argv, **env) -> Service; every service is stopped after the test."""
    started: list[Service] = []

    def start(name: str, argv: list[str], **env: str) -> Service:
        log = tmp_path / f"{name}-{len(started)}.log"
        exe = Path(sys.executable).parent / argv[0]
        full_env = {**os.environ, **env_for(settings), **env}
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [str(exe), *argv[1:]],
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        svc = Service(name, proc, log)
        started.append(svc)
        return svc

    yield start
    for svc in started:
        svc.stop()


def wait_until(
    check: object, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def await_until(
    check: object, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():  # type: ignore[operator]
            return
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def free_tcp_port() -> int:
    return free_port()
