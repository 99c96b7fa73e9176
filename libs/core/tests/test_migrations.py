"""The migrations are the only way the schema is made, and they match the models."""

import asyncio
import re

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import CheckConstraint, text
from sqlalchemy.ext.asyncio import create_async_engine

from celery_stack_core.migrate import current_revision, head_revision, main, upgrade
from celery_stack_core.models import (
    AGENT_STATUSES,
    JOB_STATUSES,
    RULE_RUN_STATUSES,
    SCAN_STATUSES,
    Base,
)


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


def _words(sql: str) -> list[str]:
    """A CHECK's quoted values, column names and numbers: what the model and PostgreSQL's
    rewrite of it (`status = ANY (ARRAY['a'::text, ...])`) have in common."""
    sql = re.sub(
        r"::\w+|\bANY\b|\bARRAY\b|\bIN\b|\bCHECK\b|\bNOT\b|\bNULL\b|\bIS\b|\bOR\b", "", sql
    )
    return sorted(re.findall(r"'\w+'|\w+", sql))


MODEL_CHECKS = sorted(  # constraints are a set: sorted, so every xdist worker collects alike
    (table.name, c.name, str(c.sqltext))
    for table in Base.metadata.sorted_tables
    for c in table.constraints
    if isinstance(c, CheckConstraint)
)


@pytest.mark.parametrize(
    ("table", "name", "model"), MODEL_CHECKS, ids=[n for _, n, _ in MODEL_CHECKS]
)
async def test_every_migrated_check_is_the_models(engine, table, name, model):
    # The models' status tuples are the one source (route Literals, queries, CHECKs): the schema
    # the migrations made must allow exactly those, or a status added to a tuple fails in SQL.
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                # migration 0002 named the scans one ck_scans_ck_scans_status (the convention
                # applied twice)
                "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                " WHERE conrelid = CAST(:t AS regclass) AND contype = 'c' AND conname LIKE :n"
            ),
            {"t": table, "n": f"%{name}"},
        )
        found = [r[0] for r in rows]
    assert len(found) == 1, f"{table} has {len(found)} CHECKs named like {name}"
    assert _words(found[0]) == _words(model), (found[0], model)


def test_every_status_tuple_has_a_check():
    checked = {tuple(sorted(re.findall(r"'(\w+)'", m))) for _, _, m in MODEL_CHECKS}
    for statuses in (SCAN_STATUSES, JOB_STATUSES, RULE_RUN_STATUSES, AGENT_STATUSES):
        assert tuple(sorted(statuses)) in checked


async def test_waiting_for_the_database_says_so_and_gives_up_at_the_deadline(caplog):
    from celery_stack_core.migrate import wait_for_database

    with pytest.raises(TimeoutError, match="not reachable"):
        await wait_for_database("postgresql+asyncpg://postgres@127.0.0.1:1/x", timeout=1.0)
    waiting = [r for r in caplog.records if r.message == "waiting for the database"]
    assert waiting and "Error" in waiting[0].error  # the refusal, named
