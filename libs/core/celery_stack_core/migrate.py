"""Schema migrations: wait for the database, then `alembic upgrade head`.

`celery-stack-migrate` is the migrations Job's command and the wait-for-migrations init
container's (`--check`: exit 0 only once the schema is at head).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import literal, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import create_async_engine

from celery_stack_core.config import get_settings

log = logging.getLogger(__name__)
HERE = Path(__file__).parent


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(HERE / "alembic"))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


async def wait_for_database(url: str, timeout: float = 60.0) -> None:
    """Retry `select 1` until the server answers (pre-start step, as in the FastAPI template)."""
    deadline = time.monotonic() + timeout
    said = 0.0  # when the last "waiting" line was logged: one every 5 s, not every attempt
    while True:
        engine = create_async_engine(url)
        try:
            async with engine.connect() as conn:
                await conn.execute(select(literal(1)))
            return
        # Refused, unresolvable, timed out (OSError) or refused by the server (still starting,
        # database not created yet): keep waiting. Anything else is no outage and propagates.
        except (OSError, DBAPIError) as exc:
            if time.monotonic() > deadline:
                raise TimeoutError(f"database not reachable after {timeout}s: {exc}") from exc
            if time.monotonic() - said >= 5.0:
                said = time.monotonic()
                log.warning("waiting for the database", extra={"error": repr(exc)})
            await asyncio.sleep(0.5)
        finally:
            await engine.dispose()


async def current_revision(url: str) -> str | None:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda c: MigrationContext.configure(c).get_current_revision()
            )
    finally:
        await engine.dispose()


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("postgresql://")).get_current_head()


def upgrade(url: str) -> None:
    asyncio.run(wait_for_database(url))
    command.upgrade(alembic_config(url), "head")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    url = get_settings().stores.database_url
    if args == ["--check"]:
        current = asyncio.run(current_revision(url))
        head = head_revision()
        print(f"schema at {current}, head is {head}")
        return 0 if current == head else 1
    if args:
        print("usage: celery-stack-migrate [--check]", file=sys.stderr)
        return 2
    upgrade(url)
    print(f"schema at {head_revision()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
