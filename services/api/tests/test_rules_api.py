"""The maintenance rules over HTTP: the admin listing (definition, last run, rows changed,
next due) and the example tables' create/read endpoints."""

from datetime import UTC, datetime

from celery_stack_core.rules import load_rules
from celery_stack_core.rules.bind import bind
from celery_stack_core.rules.engine import run_task


async def test_rules_listing_is_admin_only_and_shows_runs(api, admin_headers, settings, clean_db):
    assert (await api.get("/api/v1/maintenance/rules")).status_code == 403
    r = await api.post("/api/v1/examples/coupons", json={"code": "gone", "expires_in": -5})
    assert r.status_code == 201, r.text
    coupons = [
        b
        for b in await bind(clean_db, load_rules(settings))
        if b.rule.name == "check-expired-coupons"
    ]
    await run_task(clean_db, coupons[0], "beat:check-expired-coupons:1")
    body = (await api.get("/api/v1/maintenance/rules", headers=admin_headers)).json()
    by_name = {r["name"]: r for r in body}
    assert len(by_name) == 11
    c = by_name["check-expired-coupons"]
    assert c["last_run"]["rows_changed"] == 1
    assert c["last_run"]["status"] == "done"
    assert c["task"] == "maintenance.rule.check-expired-coupons"
    assert c["definition"]["from"] == ["active"]
    due = datetime.fromisoformat(c["next_due"])
    assert 0 < (due - datetime.now(UTC)).total_seconds() <= 300
    nightly = by_name["cleanup-long-inactive-chats"]
    assert nightly["last_run"] is None
    assert datetime.fromisoformat(nightly["next_due"]).hour == 2
    got = (await api.get(f"/api/v1/examples/coupons/{r.json()['id']}")).json()
    assert got["status"] == "expired"


async def test_examples_create_and_read(api):
    r = await api.post(
        "/api/v1/examples/point-grants", json={"user_id": "ann", "points": 30, "expires_in": 60}
    )
    assert r.status_code == 201, r.text
    await api.post(
        "/api/v1/examples/point-grants", json={"user_id": "ann", "points": 12, "expires_in": 60}
    )
    assert (await api.get("/api/v1/examples/point-balances/ann")).json()["balance"] == 42
    chat = (await api.post("/api/v1/examples/chats", json={"user_id": "ann"})).json()
    assert chat["status"] == "waiting"
    msg = await api.post(
        "/api/v1/examples/chat-messages",
        json={"chat_id": chat["id"], "sender_id": "ann", "body": "hi"},
    )
    assert msg.status_code == 201
    after = (await api.get(f"/api/v1/examples/chats/{chat['id']}")).json()
    assert after["last_message_at"] > chat["last_message_at"]
    assert len((await api.get("/api/v1/examples/point-grants")).json()) == 2
    task = await api.post(
        "/api/v1/examples/marketplace-tasks",
        json={"poster_id": "ann", "title": "fix", "expires_at": "2030-01-01T00:00:00Z"},
    )
    assert task.json()["deadline_at"].startswith("2030-01-01")


async def test_examples_refuse_bad_input_with_4xx(api):
    cases = [
        ("post", "/api/v1/examples/coupons", {"code": "x"}, 422),  # no deadline
        (
            "post",
            "/api/v1/examples/coupons",
            {"code": "x", "expires_in": 1, "expires_at": "2030-01-01T00:00:00Z"},
            422,
        ),
        (
            "post",
            "/api/v1/examples/coupons",
            {"code": "x", "expires_at": "2030-01-01T00:00:00"},
            422,
        ),
        ("post", "/api/v1/examples/coupons", {"code": "x", "expires_in": 1, "color": "red"}, 422),
        (
            "post",
            "/api/v1/examples/point-grants",
            {"user_id": "a", "points": 0, "expires_in": 1},
            422,
        ),
        ("post", "/api/v1/examples/user-statistics", {"user_id": "a"}, 405),
        ("post", "/api/v1/examples/vouchers", {}, 404),
        ("post", "/api/v1/examples/coupons", {"code": "x", "expires_at": None}, 422),
        (
            "post",
            "/api/v1/examples/chat-messages",
            {"chat_id": 999, "sender_id": "a", "body": "x"},
            404,
        ),
        ("get", "/api/v1/examples/coupons/abc", None, 422),
        ("get", "/api/v1/examples/coupons/99999999999999999999", None, 422),
        ("get", "/api/v1/examples/coupons/12345", None, 404),
    ]
    for method, url, body, code in cases:
        r = await (api.post(url, json=body) if method == "post" else api.get(url))
        assert r.status_code == code, (url, body, r.text)
    assert (
        await api.post("/api/v1/examples/coupons", json={"code": "dup", "expires_in": 9})
    ).status_code == 201
    r = await api.post("/api/v1/examples/coupons", json={"code": "dup", "expires_in": 9})
    assert r.status_code == 409


def test_malformed_rules_stop_the_api_at_boot_naming_the_field(settings):
    """A bad MAINTENANCE_RULES is a boot error with the field's name, never a 500 of the
    rules listing later (the worker and beat refuse it the same way)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import pytest

    from celery_stack_api.main import create_app
    from celery_stack_core.rules import RuleConfigError

    bad = '[{"name": "mine", "kind": "transition", "table": "coupons", "batch_size": 0}]'
    with pytest.raises(RuleConfigError, match=r"MAINTENANCE_RULES\[0\] \(rule 'mine'\)"):
        create_app(settings.replace(MAINTENANCE_RULES=bad))
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "celery-stack-api"), "serve", "--port", "1"],
        env={**os.environ, "MAINTENANCE_RULES": bad},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 78, proc.stderr
    assert "invalid maintenance rules" in proc.stderr and "rule 'mine'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_rules_naming_a_missing_column_stop_the_api_at_boot(settings, clean_db):
    """The API checks the rules against the live schema at boot, as the maintenance worker
    does: an unknown table or column is exit code 78 with the rule and field named."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from celery_stack_devstack.pytest_plugin import (
        MISSING_COLUMN_ERROR,
        RULE_WITH_A_MISSING_COLUMN,
        env_for,
    )

    proc = subprocess.run(
        [str(Path(sys.executable).parent / "celery-stack-api"), "serve", "--port", "1"],
        env={
            **os.environ,
            **env_for(settings),
            "MAINTENANCE_RULES": json.dumps([RULE_WITH_A_MISSING_COLUMN]),
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 78, proc.stderr
    assert MISSING_COLUMN_ERROR in proc.stderr
    assert "Traceback" not in proc.stderr
