"""Request count and latency per route template, for the API's 5xx-ratio and latency-SLO alerts.

A pure ASGI middleware outside everything else (the view fast path included). The `route` label
is the matched route's template, so cardinality is the number of routes: an unmatched path
(a 404 from a scanner) is "unmatched", never its raw path, and a method outside the standard
ones is "other", never the client's token.
"""

from __future__ import annotations

import re
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from celery_stack_core import metrics

# The fast paths answer before routing; their templates, named as the routes name them.
_FAST_VIEW = re.compile(r"/api/v1/(posts|articles)/[0-9]+/views")
FAST_VIEW_ROUTE = "/api/v1/{target}/{target_id}/views"
FAST_BATCH_ROUTE = "/api/v1/views:batch"  # a template without parameters: its own path
UNMATCHED = "unmatched"
# HTTP lets a client send any token as its method: label only the standard ones.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"


def route_of(scope: Scope) -> str:
    route = scope.get("route")
    template = getattr(route, "path_format", None) or getattr(route, "path", None)
    if isinstance(template, str):
        return template
    path = scope.get("path", "")
    if path == FAST_BATCH_ROUTE:
        return FAST_BATCH_ROUTE
    if _FAST_VIEW.fullmatch(path):
        return FAST_VIEW_ROUTE
    return UNMATCHED


class HttpMetrics:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # The labelled children, kept: prometheus_client's labels() validates and locks on
        # every call, a few µs per request on the view path. Same series, looked up once.
        self._requests: dict[tuple[str, str, int], Any] = {}
        self._durations: dict[str, Any] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        code = 500  # an exception that escapes every handler is what the server answers

        async def send_and_note(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = route_of(scope)
            method = scope["method"] if scope["method"] in METHODS else OTHER_METHOD
            key = (route, method, code // 100)
            requests = self._requests.get(key)
            if requests is None:
                requests = self._requests[key] = metrics.HTTP_REQUESTS.labels(
                    route, method, f"{code // 100}xx"
                )
            duration = self._durations.get(route)
            if duration is None:
                duration = self._durations[route] = metrics.HTTP_DURATION.labels(route)
            requests.inc()
            duration.observe(time.perf_counter() - started)
