"""The migrations are the only way the schema is made, and they match the models."""

import asyncio
import re

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from celery_stack_core.migrate import current_revision, head_revision, main, upgrade
from celery_stack_core.models import JOB_STATUSES, SCAN_STATUSES, Base


async def test_schema_at_head_matches_models(settings):
    assert await current_revision(settings.stores.database_url) == head_revision()
    engine = create_async_engine(settings.stores.database_url)
    async with engine.connect() as conn:
        diff = await conn.run_sync(
            lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata)
        )
    await engine.dispose()
    assert diff == [], f"models and migrations disagree: {diff}"


def test_check_command_reports_head(settings, capsys):
    # runs its own event loop: call from a worker thread of this sync test
    assert main(["--check"]) == 0
    assert "schema at" in capsys.readouterr().out
    assert main(["--bogus"]) == 2


async def test_upgrade_from_empty_database(settings):
    """A brand-new database reaches head with the same command the migrations Job runs, and a
    second run is a no-op."""
    import asyncpg

    base = settings.stores.database_url.replace("+asyncpg", "").rsplit("/", 1)[0]
    conn = await asyncpg.connect(f"{base}/postgres")
    await conn.execute('DROP DATABASE IF EXISTS "cs_fresh_migrate"')
    await conn.execute('CREATE DATABASE "cs_fresh_migrate"')
    await conn.close()
    url = settings.stores.database_url.rsplit("/", 1)[0] + "/cs_fresh_migrate"
    assert await current_revision(url) is None
    await asyncio.to_thread(upgrade, url)
    assert await current_revision(url) == head_revision()
    await asyncio.to_thread(upgrade, url)
    assert await current_revision(url) == head_revision()


async def test_counted_tables_leave_room_for_hot_updates(engine):
    from sqlalchemy import text

    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT relname, reloptions FROM pg_class WHERE relname = ANY(:t) ORDER BY relname"
            ),
            {"t": ["posts", "articles", "post_comments", "article_comments"]},
        )
        options = {r[0]: r[1] for r in rows}
    assert len(options) == 4 and all(v == ["fillfactor=80"] for v in options.values())


@pytest.mark.parametrize(
    ("table", "statuses"), [("scans", SCAN_STATUSES), ("maintenance_jobs", JOB_STATUSES)]
)
async def test_the_migrated_status_check_lists_the_models_statuses(engine, table, statuses):
    # The models' status tuple is the one source (route Literal, queries, CHECK): the schema the
    # migrations made must allow exactly those, or a status added to the tuple fails in SQL.
    async with engine.connect() as conn:
        check = await conn.scalar(
            text(
                # migration 0002 named it ck_scans_ck_scans_status (the convention applied twice)
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conrelid = CAST(:t AS regclass) AND contype = 'c' AND conname LIKE :n"
            ),
            {"t": table, "n": "%status"},
        )
    assert check is not None, f"{table} has no status CHECK"
    assert sorted(re.findall(r"'(\w+)'", check)) == sorted(statuses)


async def test_waiting_for_the_database_says_so_and_gives_up_at_the_deadline(caplog):
    from celery_stack_core.migrate import wait_for_database

    with pytest.raises(TimeoutError, match="not reachable"):
        await wait_for_database("postgresql+asyncpg://postgres@127.0.0.1:1/x", timeout=1.0)
    waiting = [r for r in caplog.records if r.message == "waiting for the database"]
    assert waiting and "Error" in waiting[0].error  # the refusal, named
