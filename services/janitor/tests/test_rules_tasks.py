"""The maintenance rules as they run: beat sends each rule on the maintenance queue with its
slot's task id, the worker runs it, a warning's notification goes out through the outbox; a bad
rule stops the worker at boot with the field named; a task name registered twice is refused."""

import asyncio
import json

import pytest
from sqlalchemy import text

from celery_stack_core.celery_app import make_celery
from celery_stack_core.rules import RuleConfigError
from celery_stack_devstack.pytest_plugin import (
    MISSING_COLUMN_ERROR,
    RULE_WITH_A_MISSING_COLUMN,
    wait_until,
)
from celery_stack_janitor.rules_tasks import register

FAST = {
    "process-customer-service-queue": {"every": 1},
    "auto-end-timeout-chats": {"every": 1, "after": 6},
    "send-timeout-warnings": {"every": 1, "after": 6, "window": 3},
    "check-expired-coupons": {"every": 1},
}


def test_a_task_name_registered_twice_is_refused(settings):
    app = make_celery(settings)
    register(app, settings)
    with pytest.raises(
        RuleConfigError,
        match=r"task 'maintenance.rule.process-customer-service-queue' is already registered",
    ):
        register(app, settings)


def test_a_rule_longer_than_the_visibility_timeout_is_refused(settings):
    s = settings.replace(
        MAINTENANCE_RULE_OVERRIDES={
            "check-expired-coupons": {"time_limit": 4000, "soft_time_limit": 3900}
        }
    )
    with pytest.raises(RuleConfigError, match="rule 'check-expired-coupons': field 'time_limit'"):
        register(make_celery(s), s)


async def q(engine, sql):
    async with engine.connect() as conn:
        return (await conn.execute(text(sql))).all()


async def test_beat_and_worker_run_the_rules(start_service, clean_db, redis, tmp_path):
    env = {"MAINTENANCE_RULE_OVERRIDES": json.dumps(FAST), "METRICS_PORT": "0"}
    async with clean_db.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO coupons (code, expires_at) VALUES ('soon', now() + interval '2 s'), "
                "('later', now() + interval '1 hour')"
            )
        )
        await conn.execute(text("INSERT INTO agents (name, capacity) VALUES ('ann', 1)"))
        await conn.execute(
            text(
                "INSERT INTO chats (user_id, created_at) VALUES ('carl', now()), "
                "('dora', now() + interval '1 ms')"
            )
        )
    worker = start_service(
        "worker-maintenance",
        ["celery-stack-worker-maintenance", "--concurrency", "1"],
        WORKER_HEARTBEAT_FILE=str(tmp_path / "alive"),
        **env,
    )
    beat = start_service(
        "beat", ["celery-stack-beat", "run"], **env, BEAT_HEARTBEAT_FILE=str(tmp_path / "beat")
    )

    async def state():
        coupons = dict(await q(clean_db, "SELECT code, status FROM coupons"))
        chats = dict(await q(clean_db, "SELECT user_id, status FROM chats"))
        notes = await q(clean_db, "SELECT recipient, delivered_at FROM rule_notifications")
        return coupons, chats, notes

    for _ in range(600):
        coupons, chats, notes = await state()
        if chats.get("carl") == "ended":
            break
        await asyncio.sleep(0.1)
    logs = worker.output()[-4000:] + beat.output()[-2000:]
    assert coupons == {"soon": "expired", "later": "active"}, logs
    # one agent, capacity 1: the first chat got her and was warned, then ended; the second
    # waited and got her once the first ended
    assert chats["carl"] == "ended", logs
    assert [n.recipient for n in notes] == ["carl"], logs
    for _ in range(300):
        coupons, chats, notes = await state()
        delivered = {n.recipient: n.delivered_at for n in notes}
        if chats["dora"] == "active" and delivered["carl"] is not None:
            break
        await asyncio.sleep(0.1)
    logs = worker.output()[-4000:] + beat.output()[-2000:]
    assert chats["dora"] == "active", logs
    assert delivered["carl"] is not None, logs  # the outbox message reached the worker
    runs = await q(
        clean_db,
        "SELECT task_id, status, attempts FROM rule_runs WHERE rule = 'check-expired-coupons'",
    )
    assert runs and all(r.task_id.startswith("beat:check-expired-coupons:") for r in runs)
    assert all(r.attempts == 1 for r in runs)


def test_a_rule_naming_a_missing_column_stops_the_worker_at_boot(
    start_service, clean_db, redis, tmp_path
):
    worker = start_service(
        "worker-maintenance",
        ["celery-stack-worker-maintenance", "--concurrency", "1"],
        MAINTENANCE_RULES=json.dumps([RULE_WITH_A_MISSING_COLUMN]),
        WORKER_HEARTBEAT_FILE=str(tmp_path / "alive"),
        METRICS_PORT="0",
    )
    wait_until(lambda: worker.proc.poll() is not None, 90, what="the worker to refuse to boot")
    assert worker.proc.returncode == 78
    assert MISSING_COLUMN_ERROR in worker.output()
