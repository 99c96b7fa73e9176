"""Traces, asserted on an in-memory exporter (real PostgreSQL and Redis, the app and the task
code in this process):

- a scan: POST /api/v1/scans -> the outbox row (its stored context) -> the broker message's
  headers -> the worker's `scans.run` span -> the worker's SQL: one trace;
- a view: POST .../views (its own trace) -> the flush that applies it, whose span links to the
  view's span, with the flush's SQL under the flush span.
"""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import select

from celery_stack_api.main import create_app
from celery_stack_core import connections, tracing
from celery_stack_core.config import DEV_USER_TOKEN
from celery_stack_core.db import make_engine
from celery_stack_core.keys import ShardKeys, shard_of
from celery_stack_core.models import Outbox

pytestmark = pytest.mark.e2e
USER = {"Authorization": f"Bearer {DEV_USER_TOKEN}", "X-User-Id": "u1"}


@pytest.fixture(scope="module")
def exporter():
    exp = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # the global provider can be set only once
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exp))
    tracing.instrument_libraries()  # what setup_tracing installs in every service
    yield exp
    tracing.uninstrument_libraries()
    exp.shutdown()


@pytest.fixture
async def api(settings, exporter, clean_db):
    exporter.clear()
    app = create_app(settings, view_fast_path=False)  # as with tracing on: every view traced
    FastAPIInstrumentor.instrument_app(app)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api", headers=USER) as c:
            yield c
    FastAPIInstrumentor.uninstrument_app(app)


def server_span(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    (span,) = [s for s in spans if s.name == name and s.kind == trace.SpanKind.SERVER]
    return span


def descendants(spans: list[ReadableSpan], root: ReadableSpan) -> list[ReadableSpan]:
    by_parent: dict[int, list[ReadableSpan]] = {}
    for s in spans:
        if s.parent is not None:
            by_parent.setdefault(s.parent.span_id, []).append(s)
    out, todo = [], [root.context.span_id]
    while todo:
        for child in by_parent.get(todo.pop(), []):
            out.append(child)
            todo.append(child.context.span_id)
    return out


def sql(spans: list[ReadableSpan]) -> list[ReadableSpan]:
    return [s for s in spans if s.attributes.get("db.system") == "postgresql"]


async def test_a_scan_is_one_trace_from_the_request_to_the_workers_sql(
    api, exporter, engine, redis, monkeypatch
):
    r = await api.post("/api/v1/scans", json={"domain": "site.test", "config": {"max_pages": 1}})
    assert r.status_code in (201, 202), r.text
    scan_id = r.json()["id"]
    spans = exporter.get_finished_spans()
    request = server_span(spans, "POST /api/v1/scans")
    trace_id = request.context.trace_id
    assert sql(descendants(spans, request)), "the API's INSERTs are under the request span"

    # the outbox row stored the request's context ...
    async with engine.connect() as conn:
        stored = (await conn.execute(select(Outbox.__table__.c.trace_context))).scalars().all()
    assert [int(c["traceparent"].split("-")[1], 16) for c in stored] == [trace_id]
    # ... and the message on the broker carries it to the worker
    raw = [json.loads(m) for m in await redis.lrange("scans", 0, -1)]
    (message,) = [m for m in raw if m["headers"]["argsrepr"].find(scan_id) >= 0]
    await redis.delete("scans")  # this test runs the task itself, below
    headers = message["headers"]
    assert int(headers["traceparent"].split("-")[1], 16) == trace_id

    # the worker's code, as its Celery task runs it (the message's id and headers)
    from celery_stack_scans import tasks

    # site.test resolves to loopback, which the SSRF guard refuses: a quick scan, no network
    scanner = tasks.settings.scanner.model_copy(update={"resolve": {"site.test": ["127.0.0.1"]}})
    local = tasks.settings.model_copy(update={"scanner": scanner})
    monkeypatch.setattr(tasks, "settings", local)
    connections._engine.cache_clear()  # created now: instrumented
    exporter.clear()
    args = json.loads(base64.b64decode(message["body"]))[0]
    # in a thread of its own, as in a worker: the task runs its own event loop (aio.run)
    await asyncio.to_thread(tasks.run.apply, args=args, task_id=headers["id"], headers=headers)
    worker_spans = exporter.get_finished_spans()
    (run,) = [s for s in worker_spans if s.name == "scans.run"]
    assert run.context.trace_id == trace_id
    assert run.attributes["scan.id"] == scan_id
    worker_sql = sql(descendants(worker_spans, run))
    statements = [s.attributes.get("db.statement", "") for s in worker_sql]
    assert any(st.startswith("UPDATE scans") for st in statements), statements
    assert {s.context.trace_id for s in worker_sql} == {trace_id}
    connections._engine.cache_clear()  # its pool belongs to the thread's loop: dropped with it


async def test_a_view_is_linked_from_the_flush_that_applies_it(api, exporter, redis, settings):
    from celery_stack_counters.flush import flush_shard

    r = await api.post("/api/v1/posts", json={"title": "traced"})
    assert r.status_code == 201, r.text
    post_id = r.json()["id"]
    exporter.clear()
    assert (await api.post(f"/api/v1/posts/{post_id}/views")).status_code == 202
    view = server_span(exporter.get_finished_spans(), "POST /api/v1/{target}/{target_id}/views")

    exporter.clear()
    sk = ShardKeys("post", "views", shard_of(post_id, settings.counters.shards))
    flush_engine = make_engine(settings)  # created after instrumenting: its SQL is traced
    try:
        result = await flush_shard(redis, flush_engine, sk)
    finally:
        await flush_engine.dispose()
    assert result.outcome == "applied" and result.applied == 1
    spans = exporter.get_finished_spans()
    (flush,) = [s for s in spans if s.name == "counters.flush"]
    assert flush.context.trace_id != view.context.trace_id  # a batch is its own trace ...
    linked = {(link.context.trace_id, link.context.span_id) for link in flush.links}
    assert (view.context.trace_id, view.context.span_id) in linked  # ... linked to its views
    statements = [s.attributes.get("db.statement", "") for s in sql(descendants(spans, flush))]
    assert any("UPDATE post" in st for st in statements), statements
    assert await redis.llen(sk.trace_links) == 0


async def test_untraced_increments_record_no_links(redis, settings):
    """Without a recording span the ingest path writes only the increment (the common case)."""
    from celery_stack_core import buffer

    await buffer.increment(redis, "post", "views", 7, shards=settings.counters.shards)
    sk = ShardKeys("post", "views", shard_of(7, settings.counters.shards))
    assert await redis.hget(sk.live, "7") is not None
    assert await redis.llen(sk.trace_links) == 0
    await redis.delete(sk.live, sk.live_since)
