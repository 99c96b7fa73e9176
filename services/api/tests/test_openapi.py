"""The OpenAPI document says what the API does: every status an operation answers, and one
error body (Problem) that every error response really has."""

import pytest

from celery_stack_api.main import create_app

SPEC = create_app().openapi()
OPS = [(m, p, op) for p, item in SPEC["paths"].items() for m, op in item.items()]


@pytest.mark.parametrize(("method", "path", "op"), OPS, ids=[f"{m} {p}" for m, p, _ in OPS])
def test_each_operation_declares_the_errors_it_can_answer(method, path, op):
    codes = set(op["responses"])
    if op.get("security"):
        assert {"401", "403"} <= codes  # 401 was undocumented on every authenticated operation
    if "{" in path:
        assert "404" in codes
    if "requestBody" in op:
        assert {"400", "413", "422"} <= codes  # 400: a body that is not UTF-8
    if path.startswith("/api/"):
        assert "503" in codes and "Retry-After" in op["responses"]["503"]["headers"]
    for code, response in op["responses"].items():
        if int(code) >= 400:
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/Problem"}, (code, schema)


def test_conflicts_are_declared_where_they_occur():
    paths = SPEC["paths"]
    assert "409" in paths["/api/v1/scans"]["post"]["responses"]
    assert "409" in paths["/api/v1/scans/{scan_id}/cancel"]["post"]["responses"]
    assert "409" in paths["/api/v1/scans/{scan_id}/retry"]["post"]["responses"]


def test_one_error_shape_declared():
    schemas = SPEC["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert schemas["Problem"]["properties"]["detail"]["type"] == "string"
    assert schemas["Problem"]["required"] == ["detail"]


async def test_an_invalid_cursor_answers_the_declared_shape(api, clean_db):
    """`?cursor=!` answered {"detail": "invalid cursor"} where the schema declared an array."""
    r = await api.get("/api/v1/scans", params={"cursor": "bm9wZQ"})
    body = r.json()
    assert r.status_code == 422 and isinstance(body["detail"], str), body
    assert set(body) == {"detail", "errors"} and body["errors"][0]["loc"] == ["query", "cursor"]
    r = await api.get("/api/v1/scans", params={"limit": 0})
    body = r.json()
    assert r.status_code == 422 and isinstance(body["detail"], str)
    assert body["errors"][0]["loc"] == ["query", "limit"] and "input" not in body["errors"][0]


def test_unique_viewers_is_described_as_an_estimate():
    counts = SPEC["components"]["schemas"]["CountsOut"]["properties"]["unique_viewers"]
    assert "HyperLogLog" in counts["description"] and "ESTIMATE" in counts["description"]


def _bounds(node, where=""):
    if isinstance(node, dict):
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf"):
            if key in node:
                yield f"{where}.{key}", node.get("type"), node[key]
        for k, v in node.items():
            yield from _bounds(v, f"{where}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _bounds(v, f"{where}[{i}]")


def test_integer_bounds_are_exact_integers():
    """FastAPI's OpenAPI model made every component's bound a float: views:batch's id maximum
    2**63-1 was published as 9.223372036854776e18 (= 2**63), so schemathesis sent an id the
    schema allowed and the API refused (422)."""
    bounds = list(_bounds(SPEC))
    assert bounds
    floats = [(w, v) for w, kind, v in bounds if kind == "integer" and not isinstance(v, int)]
    assert not floats, floats
    item = SPEC["components"]["schemas"]["ViewBatchItem"]["properties"]["id"]
    assert item["maximum"] == 2**63 - 1 and item["minimum"] == 1


def test_no_constraint_is_published_under_a_name_json_schema_ignores():
    """A constraint put before a validator was published as `ge`/`le`: clients and fuzzers
    read no bound at all, and the API then refused what the document allowed."""
    import json
    import re

    assert not re.findall(r'"(?:ge|le|gt|lt)": ', json.dumps(SPEC))


def test_exactly_one_of_two_fields_is_declared_as_the_validators_check_it():
    for name, fields in (
        ("CouponIn", ("expires_at", "expires_in")),
        ("ContentRule", ("keyword", "regex")),
    ):
        schema = SPEC["components"]["schemas"][name]
        assert schema["oneOf"] == [{"required": [f]} for f in fields]
        assert all("anyOf" not in schema["properties"][f] for f in fields)  # null is refused
