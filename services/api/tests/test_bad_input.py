"""Every string field of every operation, taken from the OpenAPI document, gets a lone surrogate,
a NUL, overlong text and wrong types: a 4xx in the one error shape, and nothing written
(every table and every Redis key unchanged). A new operation or field is covered without a
change here; its valid request is derived from its schema (BASE_BODIES where that cannot be).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import pytest
from sqlalchemy import text

from celery_stack_api.main import create_app
from celery_stack_core.config import DEV_ADMIN_TOKEN
from celery_stack_devstack.pytest_plugin import TABLES

# Bodies the schema alone cannot produce (a cross-field rule: exactly one of keyword/regex).
BASE_BODIES: dict[str, Any] = {
    "POST /api/v1/scans": {
        "domain": "example.com",
        "config": {
            "max_pages": 2,
            "content_rules": [
                {"name": "k", "keyword": "secret", "severity": "low"},
                {"name": "r", "regex": "x+"},
            ],
        },
    },
}
SURROGATE = "\ud800"


def _spec() -> dict[str, Any]:
    return create_app().openapi()


ADMIN = {"Authorization": f"Bearer {DEV_ADMIN_TOKEN}"}
SPEC = _spec()


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = SPEC["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    for key in ("anyOf", "oneOf"):
        if key in schema and "type" not in schema:  # Optional[X]: the non-null branch
            branches = [b for b in schema[key] if b.get("type") != "null"]
            return _resolve(branches[0])
    return schema


def _example(schema: dict[str, Any]) -> Any:
    """A valid value for a schema: examples, enum, default, else the smallest that fits."""
    schema = _resolve(schema)
    for key in ("examples", "enum"):
        if schema.get(key):
            return schema[key][0]
    kind = schema.get("type")
    if kind == "object":
        # oneOf of `required` lists (exactly one of two fields): the first branch's fields
        others = {n for b in schema.get("oneOf", [])[1:] for n in b.get("required", [])}
        return {k: _example(v) for k, v in schema.get("properties", {}).items() if k not in others}
    if kind == "array":
        return [_example(schema["items"])]
    if "default" in schema:
        return schema["default"]
    if kind == "string" and schema.get("format") == "date-time":
        return "2030-01-01T00:00:00Z"
    if kind == "string":
        return "x" * max(1, schema.get("minLength", 1))
    if kind in ("integer", "number"):
        return max(1, schema.get("minimum", 1))
    return True


def _leaves(value: Any, schema: dict[str, Any], loc: tuple[Any, ...] = ()) -> list[tuple]:
    """(location, schema) of every scalar field of a body, following the schema."""
    schema = _resolve(schema)
    if isinstance(value, dict):
        props = schema.get("properties", {})
        return [leaf for k, v in value.items() for leaf in _leaves(v, props[k], (*loc, k))]
    if isinstance(value, list):
        return [
            leaf for i, v in enumerate(value) for leaf in _leaves(v, schema["items"], (*loc, i))
        ]
    return [(loc, schema)]


def _set(body: Any, loc: tuple[Any, ...], value: Any) -> Any:
    body = json.loads(json.dumps(body))
    target = body
    for part in loc[:-1]:
        target = target[part]
    target[loc[-1]] = value
    return body


def _bad_strings(schema: dict[str, Any], unbounded: int) -> list[tuple[str, Any]]:
    longest = schema.get("maxLength", unbounded)
    return [
        ("lone surrogate", f"a{SURROGATE}b"),
        ("NUL", "a\x00b"),
        ("overlong", "a" * (longest + 1)),
        ("wrong type: number", 12345),
        ("wrong type: object", {"a": 1}),
    ]


def _bad_values(schema: dict[str, Any], unbounded: int = 70_000) -> list[tuple[str, Any]]:
    """`unbounded`: the overlong length where the schema has no maxLength (a body: over the
    body limit; a URL part: what fits in a URL)."""
    if schema.get("type") == "string":
        return _bad_strings(schema, unbounded)
    return [("wrong type: string", "not-a-" + str(schema.get("type"))), ("wrong type: list", [1])]


@dataclass(frozen=True)
class Case:
    method: str
    path: str
    where: str  # body / query / header / path
    name: str
    what: str
    value: Any

    def __str__(self) -> str:
        return f"{self.method} {self.path} {self.where}.{self.name}: {self.what}"


def _cases() -> list[Case]:
    out: list[Case] = []
    for path, item in SPEC["paths"].items():
        for method, op in item.items():
            for p in op.get("parameters", []):
                schema = _resolve(p["schema"])
                bad = _bad_values(schema, unbounded=4_000)
                if p["in"] in ("header", "path", "query"):
                    bad = [(w, v) for w, v in bad if isinstance(v, str) and w != "lone surrogate"]
                    if p["in"] == "header":  # headers cannot carry NUL; non-ASCII instead
                        bad = [(w, v) for w, v in bad if w != "NUL"] + [("non-ASCII", "é")]
                out += [Case(method.upper(), path, p["in"], p["name"], w, v) for w, v in bad]
            body_schema = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body_schema and not _resolve(body_schema["schema"]).get("properties"):
                # a free-form object: bad text under any key
                out += [
                    Case(method.upper(), path, "body", "any", w, {"any": v})
                    for w, v in _bad_strings({}, 70_000)[:3]
                ]
            elif body_schema:
                base = BASE_BODIES.get(f"{method.upper()} {path}") or _example(
                    body_schema["schema"]
                )
                for loc, schema in _leaves(base, body_schema["schema"]):
                    name = ".".join(map(str, loc))
                    out += [
                        Case(method.upper(), path, "body", name, w, v)
                        for w, v in _bad_values(schema)
                    ]
    return out


CASES = _cases()


async def _snapshot(engine, redis) -> tuple:
    async with engine.connect() as conn:
        tables = [
            (
                await conn.execute(
                    text(
                        f"SELECT md5(coalesce(string_agg(t::text, ',' ORDER BY t::text), '')) FROM {t} t"
                    )
                )
            ).scalar()
            for t in TABLES
        ]
    keys = sorted([k async for k in redis.scan_iter(count=1000)])
    values = [await redis.dump(k) for k in keys]
    return tables, keys, values


@dataclass
class World:
    ids: dict[str, str]
    bodies: dict[str, Any]


async def _world(api) -> World:
    """One of everything an operation can name, so path ids exist."""
    ids: dict[str, str] = {}
    for kind in ("posts", "articles"):
        r = await api.post(f"/api/v1/{kind}", json={"title": "t"})
        ids[kind] = str(r.json()["id"])
        r = await api.post(f"/api/v1/{kind}/{ids[kind]}/comments", json={"body": "b"})
        ids[f"{kind[:-1]}-comments"] = str(r.json()["id"])
    r = await api.post("/api/v1/scans", json={"domain": "example.com"})
    ids["scan_id"] = r.json()["id"]
    r = await api.post("/api/v1/scans", json={"domain": "example.org"})
    ids["finished_scan"] = r.json()["id"]
    await api.post(f"/api/v1/scans/{ids['finished_scan']}/cancel")
    await api.post(f"/api/v1/posts/{ids['posts']}/views")  # the fast path's id cache
    for path, item in SPEC["paths"].items():  # a row of every example kind, keyed by its name
        if path.startswith("/api/v1/examples/") and "post" in item:
            body = _example(item["post"]["requestBody"]["content"]["application/json"]["schema"])
            body = body | ({"code": "world"} if "code" in body else {})  # unique: not the case's
            r = await api.post(path, json=body)
            assert r.status_code == 201, (path, r.text)
            ids[path.rsplit("/", 1)[1]] = str(r.json()["id"])
    async with api._transport.app.state.app.engine.begin() as conn:  # computed by rules
        for table in ("user_statistics", "expert_stats"):
            key = "user_id" if table == "user_statistics" else "expert_id"
            await conn.execute(text(f"INSERT INTO {table} ({key}) VALUES ('x')"))
        ids["rule-notifications"] = str(
            await conn.scalar(
                text(
                    "INSERT INTO rule_notifications (rule, row_key, message, deadline)"
                    " VALUES ('r', '1', 'm', now()) RETURNING id"
                )
            )
        )
    r = await api.post(
        "/api/v1/maintenance/cleanup/orphaned-tasks", params={"dry_run": "false"}, headers=ADMIN
    )
    assert r.status_code == 202, r.text
    ids["job_id"] = str(r.json()["id"])
    return World(ids, {})


def _url(path: str, world: World, override: tuple[str, str] | None = None) -> str:
    method_ops = SPEC["paths"][path].values()
    params = {
        p["name"]: _resolve(p["schema"]) for op in method_ops for p in op.get("parameters", [])
    }
    parts: list[str] = []
    for seg in path.split("/"):
        if seg.startswith("{"):
            name = seg[1:-1]
            schema = params.get(name, {})
            if override is not None and override[0] == name:
                seg = quote(override[1], safe="")
            elif name == "scan_id":
                seg = world.ids["finished_scan" if path.endswith("/retry") else "scan_id"]
            elif name in world.ids:
                seg = world.ids[name]
            elif schema.get("enum"):
                seg = str(schema["enum"][0])
            elif schema.get("type") == "integer":  # an id of the kind the previous segment names
                seg = world.ids.get(parts[-1], world.ids["posts"])
            else:
                seg = quote(str(_example(schema)), safe="")
        parts.append(seg)
    return "/".join(parts)


async def _send(api, case: Case | None, method: str, path: str, op: dict[str, Any], world: World):
    body_schema = op.get("requestBody", {}).get("content", {}).get("application/json")
    body = None
    if body_schema:
        body = BASE_BODIES.get(f"{method} {path}") or _example(body_schema["schema"])
    params: dict[str, Any] = {}
    # The maintenance operations are admin-only: a user token would prove only the 403.
    headers: dict[str, Any] = dict(ADMIN) if path.startswith("/api/v1/maintenance/") else {}
    url = _url(path, world)
    if case is not None:
        if case.where == "body" and case.name == "any":
            body = case.value
        elif case.where == "body":
            loc = tuple(int(p) if p.isdigit() else p for p in case.name.split("."))
            body = _set(body, loc, case.value)
        elif case.where == "query":
            params[case.name] = case.value
        elif case.where == "header":
            headers[case.name] = case.value.encode("latin-1")
        else:
            url = _url(path, world, (case.name, case.value))
    content = None
    if body is not None:
        # ensure_ascii: a lone surrogate goes as the \\ud800 escape a client would send
        content = json.dumps(body).encode()
        headers["content-type"] = "application/json"
    return await api.request(method, url, params=params, headers=headers, content=content)


OPERATIONS = sorted({(c.method, c.path) for c in CASES})


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
async def test_bad_input_is_4xx_and_writes_nothing(api, engine, redis, method, path):
    world = await _world(api)
    op = SPEC["paths"][path][method.lower()]
    failures = []
    for case in (c for c in CASES if (c.method, c.path) == (method, path)):
        before = await _snapshot(engine, redis)
        r = await _send(api, case, method, path, op, world)
        if not 400 <= r.status_code < 500:
            failures.append((str(case), r.status_code, r.text[:200]))
        elif set(r.json()) - {"detail", "errors"} or not isinstance(r.json()["detail"], str):
            failures.append((str(case), "error shape", r.text[:200]))
        elif await _snapshot(engine, redis) != before:
            failures.append((str(case), "wrote something", r.status_code))
    assert not failures, "\n".join(map(str, failures))
    # The valid request every case was derived from is accepted: else a 4xx would prove nothing.
    # (Where the schema constrains nothing - a free-form body or key - no valid request can be
    # derived from it; such operations get only the bad cases.)
    if not _free_form(op):
        r = await _send(api, None, method, path, op, world)
        assert r.status_code < 300, (method, path, r.status_code, r.text)


def _free_form(op: dict[str, Any]) -> bool:
    def loose(schema: dict[str, Any]) -> bool:
        schema = _resolve(schema)
        if schema.get("type") == "object":
            return not schema.get("properties")
        constraints = ("enum", "pattern", "format")  # lengths alone do not say what is valid
        return schema.get("type") == "string" and not any(k in schema for k in constraints)

    body = op.get("requestBody", {}).get("content", {}).get("application/json")
    params = [p for p in op.get("parameters", []) if p["in"] == "path"]
    return bool(body and loose(body["schema"])) or any(loose(p["schema"]) for p in params)


def test_every_operation_with_input_is_covered():
    """The cases really come from the document: each body field and parameter has cases."""
    covered = {(c.method, c.path) for c in CASES}
    for path, item in SPEC["paths"].items():
        for method, op in item.items():
            if op.get("parameters") or op.get("requestBody"):
                assert (method.upper(), path) in covered, (method, path)
    assert any(c.name == "config.content_rules.1.regex" for c in CASES)
    assert any(c.name == "viewer_id" and c.what == "NUL" for c in CASES)
