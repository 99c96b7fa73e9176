"""Every error the API answers, in one shape and from one table (DESIGN "Operating contract").

- One body shape: `Problem` (`detail`, a sentence; `errors`, where a request was invalid).
- Which text is acceptable: any valid Unicode without NUL (PostgreSQL text cannot hold NUL, a
  lone surrogate cannot be encoded). `TextGuard` refuses the rest in any JSON body with a 422
  before a route runs, so no route can store or echo it.
- A store that cannot be reached is a 503 with Retry-After; ONLY connection-class failures are
  (refused, reset, timeouts, PostgreSQL starting or shutting down, Redis connection errors).
  A data error is the request's fault (422), anything else is a bug (500), never an "outage"
  that a client retries forever.

`install(app)` registers all of it; routes added later (any router) get it without a change.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator, Mapping
from typing import Any

import asyncpg
import redis.exceptions
import sqlalchemy.exc
from fastapi import FastAPI, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from celery_stack_core.outage import is_outage

log = logging.getLogger(__name__)
RETRY_AFTER_SECONDS = 5


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="Where: `body`/`query`/`path`/`header`, then keys.")
    msg: str
    type: str


class Problem(BaseModel):
    """The body of every error response."""

    detail: str = Field(description="What went wrong, as a sentence.")
    errors: list[FieldError] | None = Field(
        default=None, description="For invalid requests (422): each invalid field."
    )


def problem(
    code: int,
    detail: str,
    errors: list[FieldError] | None = None,
    *,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = Problem(detail=detail, errors=errors).model_dump(exclude_none=True)
    return JSONResponse(body, code, headers=dict(headers) if headers else None)


# --- which text is acceptable ----------------------------------------------------------------
def text_problem(value: str) -> str | None:
    """Why a string is not acceptable text, or None."""
    if "\x00" in value:
        return "NUL characters are not accepted"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"lone surrogate {value[exc.start]!r} is not valid Unicode"
    return None


def _strings(value: Any, loc: tuple[str | int, ...]) -> Iterator[tuple[tuple[str | int, ...], str]]:
    if isinstance(value, str):
        yield loc, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield (*loc, k), k
            yield from _strings(v, (*loc, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, (*loc, i))


def _printable(part: str | int) -> str | int:
    """A location that can be sent back: an unacceptable key is shown escaped."""
    return part if isinstance(part, int) else part.encode("utf-8", "backslashreplace").decode()


def invalid_text(body: bytes) -> list[FieldError]:
    """Unacceptable text in a JSON body. Without a `\\u` escape there can be none: a raw NUL is
    invalid JSON and a raw surrogate invalid UTF-8, both refused by the parser later."""
    if b"\\u" not in body and b"\\U" not in body:
        return []
    try:
        data = json.loads(body)
    except ValueError:
        return []  # not JSON: the route's parser answers it
    return [
        FieldError(loc=[_printable(p) for p in loc], msg=why, type="invalid_text")
        for loc, s in _strings(data, ("body",))
        if (why := text_problem(s)) is not None
    ]


class TextGuard:
    """ASGI middleware: a JSON body with unacceptable text is a 422, for every route."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["method"] in ("GET", "HEAD", "OPTIONS")
            or (b"content-length", b"0") in scope["headers"]  # no body: the hot view path
        ):
            await self.app(scope, receive, send)
            return
        messages: list[Message] = []
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            if not message.get("more_body", False):
                break
        # joined once: a bulk body arrives in many chunks, and += would copy it per chunk
        body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
        if errors := invalid_text(body):
            await problem(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                "text must be valid Unicode without NUL characters",
                errors,
            )(scope, receive, send)
            return

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)


# --- which failures are outages ----------------------------------------------------------------
def is_unavailable(exc: BaseException) -> bool:
    """A connection-class failure: the store is down or starting, the request may succeed later.
    One rule for the routes and the counters' own handling (celery_stack_core.outage); this
    module had a second list that also called a full disk (53100) an outage."""
    return is_outage(exc)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__, getattr(e, "orig", None)]


def _is_data_error(exc: BaseException) -> bool:
    return any(
        isinstance(e, sqlalchemy.exc.DataError | asyncpg.exceptions.DataError | UnicodeError)
        for e in _chain(exc)
    )


async def _store_error(request: Request, exc: Exception) -> JSONResponse:
    if is_unavailable(exc):
        log.warning("store unavailable", extra={"path": request.url.path, "error": repr(exc)})
        return unavailable("a backing store is unavailable, retry later")
    if _is_data_error(exc):
        log.warning(
            "value refused by a store", extra={"path": request.url.path, "error": repr(exc)}
        )
        return problem(status.HTTP_422_UNPROCESSABLE_CONTENT, "a value was refused by the database")
    raise exc  # a bug: the server error middleware answers 500 and logs the traceback


def unavailable(detail: str) -> JSONResponse:
    return problem(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        detail,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def _loc(loc: Any) -> list[str | int]:
    return [p if isinstance(p, int) else str(p) for p in loc]


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's own handler echoes the input, which may not even be encodable (a lone
    # surrogate made it a 500): only where and why go back.
    errors = [
        FieldError(
            loc=[_printable(p) for p in _loc(e.get("loc", ()))],
            msg=str(_printable(str(e.get("msg", "")))),
            type=str(e.get("type")),
        )
        for e in exc.errors()
    ]
    first = errors[0] if errors else None
    detail = (
        f"invalid request: {'.'.join(map(str, first.loc))}: {first.msg}"
        if first
        else "invalid request"
    )
    return problem(status.HTTP_422_UNPROCESSABLE_CONTENT, detail, errors)


def _documented_methods(app: FastAPI) -> list[tuple[re.Pattern[str], str]]:
    table: list[tuple[re.Pattern[str], str]] | None = getattr(app.state, "allow_table", None)
    if table is None:
        # literal paths before templated ones (`/scans/{id}` before `/{target}/{id}`)
        paths = sorted(app.openapi()["paths"].items(), key=lambda kv: kv[0].count("{"))
        table = [
            (re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path)) + "$"),
             ", ".join(sorted(m.upper() for m in item)))
            for path, item in paths
        ]  # fmt: skip
        app.state.allow_table = table
    return table


def allowed_methods(request: Request) -> str | None:
    """The methods the OpenAPI document gives the request's path. Starlette's 405 names the
    methods of the first route that matched only: `Allow: PUT` for a path that also takes
    DELETE."""
    for pattern, methods in _documented_methods(request.app):
        if pattern.match(request.url.path):
            return methods
    return None


async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    headers = dict(exc.headers or {})
    if exc.status_code == status.HTTP_405_METHOD_NOT_ALLOWED and "Allow" in headers:
        headers["Allow"] = allowed_methods(request) or headers["Allow"]
    return problem(exc.status_code, str(exc.detail), headers=headers or None)


def status_handler(code: int) -> Any:
    """A handler that answers `code` with the exception's message (domain errors)."""

    async def handle(request: Request, exc: Exception) -> JSONResponse:
        if code == status.HTTP_503_SERVICE_UNAVAILABLE:
            return unavailable(str(exc))
        return problem(code, str(exc))

    return handle


def install(app: FastAPI, domain_errors: dict[type[Exception], int]) -> None:
    """The error shape, the text rule and the outage rule for every route of `app`."""
    app.add_exception_handler(RequestValidationError, _invalid)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http)  # type: ignore[arg-type]
    for exc_class, code in domain_errors.items():
        app.add_exception_handler(exc_class, status_handler(code))
    for exc_class in (
        sqlalchemy.exc.SQLAlchemyError,
        asyncpg.exceptions.PostgresError,
        asyncpg.exceptions.InterfaceError,
        redis.exceptions.RedisError,
        OSError,
    ):
        app.add_exception_handler(exc_class, _store_error)
