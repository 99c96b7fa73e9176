"""The OpenAPI document says every status an operation can answer, and one error shape.

The errors that come from the app's machinery, not from a route, are derived from each
operation itself, so a route added later is documented without a change here:
authenticated (a security requirement) -> 401, 403; an id in the path -> 404; a body -> 400
(not UTF-8 / unparsable), 413 (too large); parameters or a body -> 422; under /api/ -> 503.
Route-specific errors (409, a 404 without an id) are declared on the route with `responses=`.
Every error response's body is `Problem` (errors.py).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi._compat import get_definitions, get_flat_models_from_fields, get_model_name_map
from fastapi.openapi.utils import get_fields_from_routes, get_openapi
from starlette.routing import BaseRoute

from celery_stack_api.errors import Problem

_REF = "#/components/schemas/Problem"
DESCRIPTIONS = {
    400: "The body could not be read (not UTF-8, or unparsable).",
    401: "Missing or invalid bearer token.",
    403: "The token lacks the scope this operation needs.",
    404: "No such resource, or not one this user may see.",
    405: "Not allowed on this resource.",
    409: "The resource's state does not allow this.",
    413: "The body is larger than API_MAX_BODY_BYTES (views:batch: API_BATCH_MAX_BODY_BYTES).",
    422: "Invalid request: `errors` lists each invalid field.",
    503: "A backing store is unreachable; retry after Retry-After seconds.",
}
_HEADERS = {
    401: {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "`Bearer`."}},
    503: {"Retry-After": {"schema": {"type": "integer"}, "description": "Seconds."}},
}


def implied_statuses(path: str, op: dict[str, Any]) -> set[int]:
    """The error statuses the app's machinery can answer for this operation."""
    codes: set[int] = set()
    if op.get("security"):
        codes |= {401, 403}
    if "{" in path:
        codes.add(404)
    if "requestBody" in op:
        codes |= {400, 413, 422}
    if op.get("parameters"):
        codes.add(422)
    if path.startswith("/api/"):
        codes.add(503)
    return codes


def _error_response(code: int, declared: dict[str, Any] | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": (declared or {}).get("description") or DESCRIPTIONS.get(code, "Error."),
        "content": {"application/json": {"schema": {"$ref": _REF}}},
    }
    if code in _HEADERS:
        out["headers"] = _HEADERS[code]
    return out


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
    problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(problem.pop("$defs", {}))
    components["Problem"] = problem
    for path, item in schema.get("paths", {}).items():
        for op in item.values():
            responses = op.setdefault("responses", {})
            declared = {int(c) for c in responses if c.isdigit() and int(c) >= 400}
            for code in sorted(implied_statuses(path, op) | declared):
                responses[str(code)] = _error_response(code, responses.get(str(code)))
    return schema


def exact_components(schema: dict[str, Any], routes: list[BaseRoute]) -> dict[str, Any]:
    """The component schemas as pydantic made them. get_openapi passes the document through
    FastAPI's OpenAPI model, whose numeric bounds are floats: a bigint id's `maximum` 2**63-1
    came out as 9.223372036854776e18 (2**63), so an id the schema allowed was refused.
    Parameters are not passed through that model; components are, so they are put back."""
    fields = get_fields_from_routes(routes)
    names = get_model_name_map(get_flat_models_from_fields(fields, known_models=set()))
    _, exact = get_definitions(
        fields=fields, model_name_map=names, separate_input_output_schemas=True
    )
    components = schema.get("components", {}).get("schemas", {})
    components.update({k: v for k, v in exact.items() if k in components})
    return schema


def install(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = document_errors(exact_components(doc, app.routes))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
