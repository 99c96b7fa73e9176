"""Scans API on the real app, PostgreSQL and Redis (the broker): one transaction writes the scan
and its outbox row, the message is published after COMMIT with the derived task id."""

import json
import uuid

import pytest
from sqlalchemy import text

from celery_stack_core.config import DEV_ADMIN_TOKEN

ADMIN = {"Authorization": f"Bearer {DEV_ADMIN_TOKEN}", "X-User-Id": "ops"}


async def queued_messages(redis):
    return [json.loads(m) for m in await redis.lrange("scans", 0, -1)]


async def outbox_rows(engine):
    async with engine.connect() as conn:
        return (await conn.execute(text("SELECT * FROM outbox ORDER BY id"))).all()


async def test_create_publishes_after_commit(api, clean_db, redis):
    r = await api.post("/api/v1/scans", json={"domain": "Example.COM.", "config": {"max_pages": 3}})
    assert r.status_code == 201, r.text
    scan = r.json()
    assert scan["domain"] == "example.com" and scan["status"] == "queued" and scan["attempt"] == 1
    assert scan["owner"] == "u1" and scan["task_id"] == f"scan-{scan['id']}-1"
    assert scan["config"] == {"max_pages": 3}
    [row] = await outbox_rows(clean_db)
    assert row.task_name == "scans.run" and row.task_id == scan["task_id"] and row.queue == "scans"
    assert row.args == [scan["id"], 1] and row.sent_at is not None
    [msg] = await queued_messages(redis)
    assert msg["headers"]["id"] == scan["task_id"] and msg["headers"]["task"] == "scans.run"
    # the body carries no countdown/eta: the row is committed, the task may run at once
    assert msg["headers"].get("eta") is None


async def test_idempotency_key(api, clean_db, redis):
    h = {"Idempotency-Key": "req-1"}
    a = await api.post("/api/v1/scans", json={"domain": "example.com"}, headers=h)
    b = await api.post("/api/v1/scans", json={"domain": "example.com"}, headers=h)
    assert (a.status_code, b.status_code) == (201, 200) and a.json()["id"] == b.json()["id"]
    assert len(await outbox_rows(clean_db)) == 1 and len(await queued_messages(redis)) == 1
    c = await api.post("/api/v1/scans", json={"domain": "other.com"}, headers=h)
    assert c.status_code == 409 and "Idempotency-Key" in c.json()["detail"]
    # the key is per owner
    d = await api.post(
        "/api/v1/scans", json={"domain": "example.com"}, headers={**h, "X-User-Id": "u2"}
    )
    assert d.status_code == 201 and d.json()["id"] != a.json()["id"]


@pytest.mark.parametrize(
    ("domain", "message"),
    [
        ("", "domain is empty"),
        ("127.0.0.1", "IP addresses are not accepted"),
        ("::1", "no scheme, port"),
        ("https://example.com", "no scheme, port"),
        ("example.com:8080", "no scheme, port"),
        ("localhost", "at least two labels"),
        ("exa mple.com", "no scheme, port"),
        ("-bad.example.com", "invalid label"),
        ("example.123", "cannot be numeric"),
        ("a" * 64 + ".com", "invalid label"),
        (("a" * 60 + ".") * 4 + "example.com", "longer than 253"),
    ],
)
async def test_invalid_domains_are_422_with_a_clear_message(api, clean_db, domain, message):
    r = await api.post("/api/v1/scans", json={"domain": domain})
    assert r.status_code == 422
    assert message in json.dumps(r.json())
    assert await outbox_rows(clean_db) == []


@pytest.mark.parametrize(
    "config",
    [
        {"bogus": 1},
        {"max_pages": 0},
        {"https_port": 70000},
        {"content_rules": [{"name": "x", "regex": "("}]},
        {"content_rules": [{"name": "x"}]},
        {"content_rules": [{"name": "x", "keyword": "a", "regex": "a"}]},
        # finding keys are derived from the rule name: two rules of one name would collide
        {"content_rules": [{"name": "x", "keyword": "a"}, {"name": "x", "regex": "b"}]},
    ],
)
async def test_invalid_config_is_422(api, clean_db, config):
    r = await api.post("/api/v1/scans", json={"domain": "example.com", "config": config})
    assert r.status_code == 422, r.text


async def test_unicode_domain_is_refused_with_its_idna_form_accepted(api, clean_db):
    """The schema's pattern is ASCII: a Unicode name would be schema-invalid yet accepted."""
    r = await api.post("/api/v1/scans", json={"domain": "bücher.example"})
    assert r.status_code == 422 and "xn--" in r.json()["detail"]
    r = await api.post("/api/v1/scans", json={"domain": "xn--bcher-kva.example"})
    assert r.status_code == 201 and r.json()["domain"] == "xn--bcher-kva.example"


@pytest.mark.parametrize(
    "domain",
    [
        "0",
        "example.com",
        "EXAMPLE.com.",
        "a.b",
        "1.com",
        "a-b.c-d",
        "x.0a",
        "a" * 63 + ".com",
        "a..com",
        " example.com",
        "example.com:80",
        "1.2.3.4",
        "-a.com",
        "a-.com",
        "_a.com",
        "a.com..",
        ".a.com",
        "bücher.example",
        ("a" * 60 + ".") * 4 + "abcdefghijklm",
    ],
)
async def test_domain_schema_and_validation_agree(api, clean_db, domain):
    """Schema-valid is accepted, schema-invalid refused: `{"domain": "0"}` was valid per the
    schema (a string of 1..300) and refused."""
    import re

    schema = (await api.get("/openapi.json")).json()["components"]["schemas"]["ScanIn"]
    field = schema["properties"]["domain"]
    valid = (
        bool(re.fullmatch(field.get("pattern", ".+"), domain)) and len(domain) <= field["maxLength"]
    )
    r = await api.post("/api/v1/scans", json={"domain": domain})
    assert r.status_code == (201 if valid else 422), (domain, r.text)


async def test_an_empty_cursor_is_the_first_page(api, clean_db):
    await api.post("/api/v1/scans", json={"domain": "example.com"})
    r = await api.get("/api/v1/scans", params={"cursor": ""})
    assert r.status_code == 200 and len(r.json()["items"]) == 1


async def test_owners_see_their_scans_admins_see_all(api, clean_db):
    mine = (await api.post("/api/v1/scans", json={"domain": "a.com"})).json()
    theirs = (
        await api.post("/api/v1/scans", json={"domain": "b.com"}, headers={"X-User-Id": "u2"})
    ).json()
    assert (await api.get(f"/api/v1/scans/{mine['id']}")).status_code == 200
    assert (await api.get(f"/api/v1/scans/{theirs['id']}")).status_code == 404
    assert (await api.delete(f"/api/v1/scans/{theirs['id']}")).status_code == 404
    assert (await api.post(f"/api/v1/scans/{theirs['id']}/cancel")).status_code == 404
    assert [s["id"] for s in (await api.get("/api/v1/scans")).json()["items"]] == [mine["id"]]
    everyone = (await api.get("/api/v1/scans", headers=ADMIN)).json()["items"]
    assert {s["id"] for s in everyone} == {mine["id"], theirs["id"]}
    assert (await api.get(f"/api/v1/scans/{theirs['id']}", headers=ADMIN)).status_code == 200
    assert (
        await api.get("/api/v1/scans", headers={"Authorization": "Bearer nope"})
    ).status_code == 401
    assert (await api.get(f"/api/v1/scans/{uuid.uuid4()}")).status_code == 404
    assert (await api.get("/api/v1/scans/not-a-uuid")).status_code == 422


async def test_cursor_pagination_and_status_filter(api, clean_db):
    ids = [
        (await api.post("/api/v1/scans", json={"domain": f"s{i}.com"})).json()["id"]
        for i in range(7)
    ]
    seen, cursor = [], None
    while True:
        params = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = (await api.get("/api/v1/scans", params=params)).json()
        seen += [s["id"] for s in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    await api.post(f"/api/v1/scans/{ids[0]}/cancel")
    cancelled = (await api.get("/api/v1/scans", params={"status": "cancelled"})).json()["items"]
    assert [s["id"] for s in cancelled] == [ids[0]]
    assert (await api.get("/api/v1/scans", params={"status": "bogus"})).status_code == 422
    assert (await api.get("/api/v1/scans", params={"cursor": "!!"})).status_code == 422


@pytest.mark.parametrize(
    "value",
    [
        "bm9wZQ",  # the old base64 form
        "1_" + "0" * 31,  # an id one digit short
        "1_" + "G" * 32,
        "12345678901234567_" + "0" * 32,  # past the year 2286
        "-1_" + "0" * 32,
        "1" + "0" * 32,
    ],
)
async def test_cursors_outside_the_pattern_are_422(api, clean_db, value):
    r = await api.get("/api/v1/scans", params={"cursor": value})
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["query", "cursor"], r.text


@pytest.mark.parametrize(
    "value", ["0_" + "0" * 32, "9" * 16 + "_" + "f" * 32, "1700000000000000_" + "a1" * 16]
)
async def test_every_cursor_the_schema_admits_is_a_page(api, clean_db, value):
    """The cursor was base64 JSON: schema-valid text (`[A-Za-z0-9_-]*`) that did not decode was
    refused (schemathesis: `?cursor=yTg`). Any position the pattern admits now starts a page."""
    import re

    await api.post("/api/v1/scans", json={"domain": "example.com"})
    schema = (await api.get("/openapi.json")).json()["paths"]["/api/v1/scans"]["get"]
    (param,) = [p for p in schema["parameters"] if p["name"] == "cursor"]
    assert re.fullmatch(param["schema"]["anyOf"][0]["pattern"], value)
    r = await api.get("/api/v1/scans", params={"cursor": value})
    assert r.status_code == 200, r.text
    assert len(r.json()["items"]) == (1 if value.startswith("9") else 0)


async def test_cancel_retry_delete(api, clean_db, redis):
    scan = (await api.post("/api/v1/scans", json={"domain": "example.com"})).json()
    r = await api.post(f"/api/v1/scans/{scan['id']}/retry")
    assert r.status_code == 409 and "queued" in r.json()["detail"]
    r = await api.post(f"/api/v1/scans/{scan['id']}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert (await api.post(f"/api/v1/scans/{scan['id']}/cancel")).status_code == 409
    r = await api.post(f"/api/v1/scans/{scan['id']}/retry")
    assert r.status_code == 202
    again = r.json()
    assert again["attempt"] == 2 and again["status"] == "queued"
    assert again["task_id"] == f"scan-{scan['id']}-2"
    assert [m["headers"]["id"] for m in await queued_messages(redis)] == [
        f"scan-{scan['id']}-2",
        f"scan-{scan['id']}-1",
    ]
    rows = await outbox_rows(clean_db)
    assert [r.task_id for r in rows] == [scan["task_id"], again["task_id"]]
    assert all(r.sent_at is not None for r in rows)
    assert (await api.get(f"/api/v1/scans/{scan['id']}/findings")).json() == {
        "items": [],
        "next_cursor": None,
    }
    assert (await api.delete(f"/api/v1/scans/{scan['id']}")).status_code == 204
    assert (await api.get(f"/api/v1/scans/{scan['id']}")).status_code == 404
    assert (await api.delete(f"/api/v1/scans/{scan['id']}")).status_code == 404


async def test_findings_pagination(api, clean_db):
    scan = (await api.post("/api/v1/scans", json={"domain": "example.com"})).json()
    async with clean_db.begin() as conn:
        for i in range(5):
            await conn.execute(
                text(
                    "INSERT INTO findings (scan_id, key, kind, severity, title) "
                    "VALUES (:s, :k, 'x', 'low', 't')"
                ),
                {"s": scan["id"], "k": f"k{i}"},
            )
    page = (await api.get(f"/api/v1/scans/{scan['id']}/findings", params={"limit": 2})).json()
    assert [f["key"] for f in page["items"]] == ["k0", "k1"]
    page = (
        await api.get(
            f"/api/v1/scans/{scan['id']}/findings",
            params={"limit": 10, "cursor": page["next_cursor"]},
        )
    ).json()
    assert [f["key"] for f in page["items"]] == ["k2", "k3", "k4"] and page["next_cursor"] is None


async def test_outbox_row_carries_the_request_trace(api, clean_db):
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("client") as span:
        r = await api.post("/api/v1/scans", json={"domain": "example.com"})
    trace_id = format(span.get_span_context().trace_id, "032x")
    [row] = await outbox_rows(clean_db)
    assert r.status_code == 201 and trace_id in row.trace_context["traceparent"]


@pytest.mark.parametrize(
    ("config", "code"),
    [
        ({"check_http": 0}, 422),  # was taken as False
        ({"http_port": False}, 422),  # was taken as port 0 -> refused by ge=1 only by luck
        ({"https_port": "443"}, 422),  # was taken as 443
        ({"https_port": 443.0}, 201),  # a JSON integer, as the schema says
        ({"content_rules": [{"name": "a", "keyword": "k", "regex": None}]}, 422),  # null given
        ({"content_rules": [{"name": "a", "keyword": "k"}]}, 201),
    ],
)
async def test_scan_config_takes_json_types_as_the_schema_says(api, clean_db, config, code):
    r = await api.post("/api/v1/scans", json={"domain": "example.com", "config": config})
    assert r.status_code == code, r.text
