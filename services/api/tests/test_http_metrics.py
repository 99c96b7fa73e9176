"""The API's request metrics keep a bounded label set whatever clients send: the route template
(never the raw path), a standard method or "other" (never the client's token), a status class."""

from __future__ import annotations

import httpx

from celery_stack_api.http_metrics import HttpMetrics
from celery_stack_core import metrics


async def test_request_labels_stay_bounded_whatever_the_client_sends():
    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def series() -> set[tuple[str, str, str]]:
        return {
            (s.labels["route"], s.labels["method"], s.labels["code"])
            for fam in metrics.HTTP_REQUESTS.collect()
            for s in fam.samples
            if s.name.endswith("_total")
        }

    before = series()
    transport = httpx.ASGITransport(app=HttpMetrics(app))
    async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
        for i in range(200):
            await client.request(f"PROBE{i}", f"/wp-admin/{i}.php")
            await client.get(f"/no/such/path/{i}")
    new = series() - before
    assert new <= {("unmatched", "other", "4xx"), ("unmatched", "GET", "4xx")}, sorted(new)[:5]
