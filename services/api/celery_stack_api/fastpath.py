"""The view ingest hot path without FastAPI's per-request machinery (bench/bench_ingest.py).

`POST /api/v1/{posts|articles}/{id}/views` is the busiest endpoint by far. FastAPI's routing,
dependency solving and response validation cost about twice what the view itself costs
(one Lua HINCRBY), so this ASGI middleware answers the plain, valid case directly:

- canonical path and id (1 .. 2**63-1, no leading zeros), no query string;
- a bearer token with the `user` scope;
- no body, or a small `application/json` body `{}` / `{"viewer_id": "<1..128 chars>"}`;
- an id already in the existence cache (so no database read is needed).

It then calls the same `counting.record_view` as the route and answers exactly what the
route answers (202 `{"accepted":true,"path":...}`); an exception goes to the app's own
exception handlers, so errors are the route's errors. Anything else - a bad or missing token,
an unknown or uncached id, any other body - is passed on untouched (the body replayed) to
FastAPI, which answers it as before (401/403/404/413/422 ...). The route stays in the app and
in the OpenAPI docs; with tracing on, this path is not installed, so every view gets its span.

`POST /api/v1/views:batch` (bulk ingest) the same way: its cost is per item, and FastAPI's body
handling (`json.loads`, then validating Python objects) was most of it. With a user token and
an `application/json` body, the body is validated straight from its bytes by pydantic-core
against the route's own type (`ViewBatchIn`: same rules, same limits); valid, it is buffered by
the same `counting.record_views_batch` and answered as the route answers. Invalid, or any other
case, goes to FastAPI untouched, which answers it as before (the same 422s), nothing written.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
from fastapi import FastAPI
from pydantic import TypeAdapter, ValidationError
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from celery_stack_api import counting
from celery_stack_api.routes.counters import ViewBatchIn, batch_answer
from celery_stack_api.state import AppState
from celery_stack_core import metrics
from celery_stack_core.targets import TARGETS_BY_URL, TargetType

_PATH = re.compile(r"/api/v1/(posts|articles)/([1-9][0-9]{0,18})/views")
_MAX_ID = 2**63 - 1
_MAX_BODY = 1024  # larger bodies (even valid ones) take the FastAPI path
_HEADERS = [(b"content-type", b"application/json")]
BATCH_PATH = "/api/v1/views:batch"
_BATCH = TypeAdapter(ViewBatchIn)


class _View(NamedTuple):
    """A view the fast path may answer, as far as its path and headers tell."""

    state: AppState
    target: TargetType
    target_id: int
    length: bytes | None  # Content-Length
    ctype: bytes | None  # Content-Type


class ViewFastPath:
    def __init__(self, app: ASGIApp, api: FastAPI) -> None:
        self.app = app
        self.api = api  # its state (set in the lifespan) and its exception handlers
        self.targets: dict[str, TargetType] = {
            url: TARGETS_BY_URL[url].type
            for url in ("posts", "articles")
            if "views" in TARGETS_BY_URL[url].buffered
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == BATCH_PATH:
            await self._batch(scope, receive, send)
            return
        view = self._plain_view(scope)
        if view is None:
            await self.app(scope, receive, send)
            return
        state, target, target_id, length, ctype = view
        body = b""
        if length != b"0":
            if length is not None and (not length.isdigit() or int(length) > _MAX_BODY):
                await self.app(scope, receive, send)
                return
            body = await _read_body(receive)
        viewer = _viewer(body) if not body or ctype == b"application/json" else False
        if viewer is False:
            await self.app(scope, _replay(body, receive), send)
            return
        try:
            path = await counting.record_view(state, target, target_id, viewer)
        except Exception as exc:
            await self._error(exc, scope, receive, send)
            return
        fast_answered(target).inc()
        await _accepted(send, path)

    async def _batch(self, scope: Scope, receive: Receive, send: Send) -> None:
        """views:batch with a valid JSON body and a user token; anything else to FastAPI."""
        state: AppState | None = getattr(self.api.state, "app", None)
        h = _headers(scope)
        if (
            state is None
            or scope["method"] != "POST"
            or scope["query_string"]
            or h.chunked
            or h.length is None
            or h.ctype != b"application/json"
            or not _authorized(state, h.token)
        ):
            await self.app(scope, receive, send)
            return
        body = await _read_body(receive)
        try:
            batch = _BATCH.validate_json(body)
        except ValidationError:
            await self.app(scope, _replay(body, receive), send)  # FastAPI's 422, as before
            return
        try:
            out = await counting.record_views_batch(state, counting.sum_views(batch.items))
        except Exception as exc:
            await self._error(exc, scope, receive, send)
            return
        fast_answered("batch").inc()
        await _json(send, 202, batch_answer(out).model_dump_json().encode())

    async def _error(self, exc: Exception, scope: Scope, receive: Receive, send: Send) -> None:
        """The app's own exception handler answers (the route's errors); none: it propagates."""
        handler = _handler(self.api, exc)
        if handler is None:
            raise exc
        response = await handler(Request(scope), exc)
        await response(scope, receive, send)

    def _plain_view(self, scope: Scope) -> _View | None:
        """The view this request records if it is the plain case up to its body; else None."""
        if scope["type"] != "http" or scope["method"] != "POST" or scope["query_string"]:
            return None
        m = _PATH.fullmatch(scope["path"])
        target = self.targets.get(m.group(1)) if m else None
        if m is None or target is None:
            return None
        target_id = int(m.group(2))
        state: AppState | None = getattr(self.api.state, "app", None)
        h = _headers(scope)
        if (
            state is None
            or target_id > _MAX_ID
            or h.chunked
            or not _authorized(state, h.token)
            or (target, target_id) not in state.known_ids
        ):
            return None
        return _View(state, target, target_id, h.length, h.ctype)


@functools.cache
def fast_answered(target: str) -> Any:
    """The `VIEW_FAST_PATH` child of `target`, looked up once (labels() costs µs per call)."""
    return metrics.VIEW_FAST_PATH.labels(target)


@dataclass
class _Headers:
    token: bytes | None = None
    length: bytes | None = None
    ctype: bytes | None = None
    chunked: bool = False


def _headers(scope: Scope) -> _Headers:
    """The first of each header, as Starlette's headers.get returns it."""
    h = _Headers()
    for name, value in scope["headers"]:
        if name == b"authorization":
            h.token = value if h.token is None else h.token
        elif name == b"content-length":
            h.length = value if h.length is None else h.length
        elif name == b"content-type":
            h.ctype = value if h.ctype is None else h.ctype
        elif name == b"transfer-encoding":
            h.chunked = True
    return h


async def _accepted(send: Send, path: str) -> None:
    """The route's 202 answer, byte for byte."""
    await _json(send, 202, b'{"accepted":true,"path":"' + path.encode() + b'"}')


async def _json(send: Send, status: int, payload: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [*_HEADERS, (b"content-length", str(len(payload)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": payload})


def _authorized(state: AppState, header: bytes | None) -> bool:
    if header is None or header[:7] != b"Bearer ":
        return False
    principal = state.tokens.lookup(header[7:].decode("latin-1"))
    return principal is not None and "user" in principal.scopes


def _viewer(body: bytes) -> str | bool | None:
    """The viewer id of a body the route would accept as is; False when FastAPI must judge."""
    if not body:
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    if not isinstance(data, dict) or set(data) - {"viewer_id"}:
        return False
    viewer = data.get("viewer_id")
    if viewer is None:
        return None
    if isinstance(viewer, str) and 1 <= len(viewer) <= 128:
        return viewer
    return False


async def _read_body(receive: Receive) -> bytes:
    """The whole body; the server holds it to its Content-Length (at most _MAX_BODY for a view;
    for a batch, API_BATCH_MAX_BODY_BYTES, which BodyLimit checks before this runs)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _handler(api: FastAPI, exc: Exception) -> Any:
    for cls in type(exc).__mro__:
        if cls in api.exception_handlers:
            return api.exception_handlers[cls]
    return None
