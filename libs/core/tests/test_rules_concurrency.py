"""Maintenance rules under concurrency and kill -9, with real runner processes.

A test-only audit table records every status change of the example tables, unique per
(table, row, new status): a second transition, deduction or assignment of a row would violate
it and fail its runner. Notifications are unique per rule + row in the schema itself.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text

from celery_stack_core.rules.bind import bind
from celery_stack_core.rules.engine import run_task
from celery_stack_core.rules.load import build_rules
from celery_stack_devstack.pytest_plugin import env_for

RUNNER = Path(__file__).with_name("rules_runner.py")
AUDITED = ("coupons", "point_grants", "chats")
RULES = [
    "check-expired-coupons",
    "check-expired-points",
    "send-timeout-warnings",
    "process-customer-service-queue",
]
# Small batches: many interleaved transactions between the four runners.
OVERRIDES = {
    "check-expired-coupons": {"batch_size": 40},
    "check-expired-points": {"batch_size": 25},
    "send-timeout-warnings": {"batch_size": 15},
    "process-customer-service-queue": {"batch_size": 10},
}

AUDIT_SQL = (
    """CREATE TABLE IF NOT EXISTS rule_audit (
    tbl text NOT NULL, row_id bigint NOT NULL, status text NOT NULL,
    UNIQUE (tbl, row_id, status))""",
    "TRUNCATE rule_audit",
    """CREATE OR REPLACE FUNCTION rule_audit_fn() RETURNS trigger AS $$
BEGIN
    IF NEW.status IS DISTINCT FROM OLD.status THEN
        INSERT INTO rule_audit VALUES (TG_TABLE_NAME, NEW.id, NEW.status);
    END IF;
    RETURN NEW;
END $$ LANGUAGE plpgsql""",
)


async def sql(engine, statement, **params):
    async with engine.begin() as conn:
        return await conn.execute(text(statement), params)


async def scalar(engine, statement, **params):
    async with engine.connect() as conn:
        return (await conn.execute(text(statement), params)).scalar()


@pytest.fixture
async def audited(clean_db):
    # hand-written SQL: the trigger is the point (a constraint outside the code under test)
    async with clean_db.begin() as conn:
        for statement in AUDIT_SQL:
            await conn.exec_driver_sql(statement)
        for table in AUDITED:
            await conn.exec_driver_sql(
                f"CREATE OR REPLACE TRIGGER rule_audit AFTER UPDATE ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION rule_audit_fn()"
            )
    yield clean_db
    async with clean_db.begin() as conn:
        for table in AUDITED:
            await conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS rule_audit ON {table}")
        # gone again: test_migrations compares the database with the models
        await conn.exec_driver_sql("DROP FUNCTION IF EXISTS rule_audit_fn()")
        await conn.exec_driver_sql("DROP TABLE IF EXISTS rule_audit")


def runner(settings, rules, rounds, *extra, **env):
    full_env = {
        **os.environ,
        **env_for(settings),
        "MAINTENANCE_RULE_OVERRIDES": json.dumps(OVERRIDES),
        **env,
    }
    return subprocess.Popen(
        [sys.executable, str(RUNNER), ",".join(rules), str(rounds), *extra],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


async def seed(engine):
    await sql(
        engine,
        "INSERT INTO coupons (code, expires_at) "
        "SELECT 'c' || i, now() - interval '1 minute' FROM generate_series(1, 1000) i",
    )
    await sql(
        engine,
        "INSERT INTO point_balances (user_id, balance) "
        "SELECT 'u' || i, 1000 FROM generate_series(1, 50) i",
    )
    await sql(
        engine,
        "INSERT INTO point_grants (user_id, points, expires_at) "
        "SELECT 'u' || (i % 50 + 1), 1 + i % 7, now() - interval '1 minute' "
        "FROM generate_series(1, 400) i",
    )
    await sql(
        engine,
        "INSERT INTO agents (name, capacity) SELECT 'a' || i, 4 FROM generate_series(1, 15) i",
    )
    # idle active chats, 9 minutes idle: within 2 minutes of the 10-minute end
    await sql(
        engine,
        "INSERT INTO chats (user_id, agent_id, status, last_message_at) "
        "SELECT 'w' || i, 1 + i % 15, 'active', now() - interval '9 minutes' "
        "FROM generate_series(1, 150) i",
    )
    # 15 agents x 4 = 60 slots, 150 taken by the active chats above (10 each: full) ... so
    # add fresh agents for the waiting chats
    await sql(
        engine,
        "INSERT INTO agents (name, capacity) SELECT 'free' || i, 3 FROM generate_series(1, 20) i",
    )
    await sql(
        engine,
        "INSERT INTO chats (user_id, created_at) "
        "SELECT 'q' || i, now() - i * interval '1 second' FROM generate_series(1, 200) i",
    )


async def test_four_runners_never_do_anything_twice(settings, audited, tmp_path):
    engine = audited
    await seed(engine)
    grants_due = await scalar(engine, "SELECT sum(points) FROM point_grants")
    go = tmp_path / "go"
    procs = [runner(settings, RULES, 2, RULES_GO_FILE=str(go)) for _ in range(4)]
    for p in procs:  # all four have bound their rules: start them at once
        assert p.stdout.readline().strip() == b"ready", p.stderr.read().decode()[-3000:]
    go.touch()
    outs = [p.communicate(timeout=180) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err.decode()[-3000:]
    totals = [json.loads(out.decode().splitlines()[-1]) for out, _ in outs]
    rows = {r: sum(t[r] for t in totals) for r in RULES}
    # every runner did part of the work (the work was split, not done by one)
    assert sum(1 for t in totals if t["check-expired-coupons"] > 0) >= 2

    # transitions: each of the 1000 coupons once (audit unique), no more, no less
    assert rows["check-expired-coupons"] == 1000
    assert await scalar(engine, "SELECT count(*) FROM coupons WHERE status = 'expired'") == 1000
    assert await scalar(engine, "SELECT count(*) FROM rule_audit WHERE tbl = 'coupons'") == 1000
    # deductions: each grant once; the balances lost exactly the points that expired
    assert rows["check-expired-points"] == 400
    assert await scalar(engine, "SELECT count(*) FROM rule_audit WHERE tbl = 'point_grants'") == 400
    assert await scalar(engine, "SELECT sum(balance) FROM point_balances") == 50 * 1000 - grants_due
    # warnings: one per idle chat, one outbox message each
    assert rows["send-timeout-warnings"] == 150
    assert await scalar(engine, "SELECT count(*) FROM rule_notifications") == 150
    assert await scalar(engine, "SELECT count(DISTINCT task_id) FROM outbox") == 150
    # assignment: 20 free agents x 3 slots = 60 chats, never over capacity, one agent each
    assert rows["process-customer-service-queue"] == 60
    over = await scalar(
        engine,
        "SELECT count(*) FROM agents a WHERE a.capacity < "
        "(SELECT count(*) FROM chats c WHERE c.agent_id = a.id AND c.status = 'active' "
        " AND c.user_id LIKE 'q%')",
    )
    assert over == 0
    assert (
        await scalar(
            engine, "SELECT count(*) FROM rule_audit WHERE tbl = 'chats' AND status = 'active'"
        )
        == 60
    )


async def test_kill_9_mid_batch_loses_nothing_and_redoes_the_batch_once(settings, audited):
    engine = audited
    await seed(engine)
    task_id = "beat:check-expired-coupons:1700000000000"
    # killed inside the third batch's transaction, before COMMIT
    p = runner(settings, ["check-expired-coupons"], 1, task_id, RULES_KILL_AT_BATCH="3")
    out, err = p.communicate(timeout=120)
    assert p.returncode == -9, err.decode()[-3000:]
    assert json.loads(out.decode().splitlines()[-1]) == {
        "killing": "check-expired-coupons",
        "uncommitted": 40,
    }
    # two batches committed, the third rolled back with the process
    assert await scalar(engine, "SELECT count(*) FROM coupons WHERE status = 'expired'") == 80
    assert (
        await scalar(engine, "SELECT status FROM rule_runs WHERE task_id = :t", t=task_id)
        == "running"
    )
    # the redelivered task (same id) resumes: the lost batch is done now, once
    rules = build_rules(defaults=True, overrides=OVERRIDES, extra=[])
    (coupons,) = await bind(engine, [r for r in rules if r.name == "check-expired-coupons"])
    assert (await run_task(engine, coupons, task_id)).rows == 920
    assert await scalar(engine, "SELECT count(*) FROM coupons WHERE status = 'expired'") == 1000
    assert await scalar(engine, "SELECT count(*) FROM rule_audit WHERE tbl = 'coupons'") == 1000
    run = (
        await sql(
            engine, "SELECT status, attempts, rows FROM rule_runs WHERE task_id = :t", t=task_id
        )
    ).one()
    assert tuple(run) == ("done", 2, 920)
    # and a third delivery of the same slot is refused
    assert (await run_task(engine, coupons, task_id)).refused
