"""Each process exposes only its own families; the metrics port answers /metrics, /healthz and
/readyz and nothing else; queue length counts every priority list and unacked counts by queue."""

import json

import httpx
import pytest
import redis as redis_sync
from prometheus_client.parser import text_string_to_metric_families

from celery_stack_core import celery_metrics, metrics


def families(role: str, extra=()) -> set[str]:
    body, _ = metrics.render(metrics.registry(role, extra))
    return {f.name for f in text_string_to_metric_families(body.decode())}


def test_each_role_exposes_only_its_own_families():
    metrics.BEAT_EPOCH.set(3)
    metrics.FLUSH_LAG.labels("post:views:0").set(1)
    metrics.HTTP_REQUESTS.labels("/x", "GET", "2xx").inc()
    api, beat = families("api"), families("beat")
    counters = families(metrics.role_of_worker("counters"))
    assert "celery_stack_beat_epoch" in beat
    assert "celery_stack_beat_epoch" not in api  # the API used to show `beat_epoch 0`
    assert "celery_stack_beat_epoch" not in counters
    assert "celery_stack_flush_lag_seconds" in counters
    assert "celery_stack_flush_lag_seconds" not in api
    assert "celery_stack_http_requests" in api
    assert "celery_stack_http_requests" not in beat
    # a queue added through values only gets the generic families
    assert "celery_stack_flush_lag_seconds" not in families(metrics.role_of_worker("reports"))


def test_metrics_port_serves_metrics_checks_and_404(free_tcp_port):
    reg = metrics.registry("beat")
    server = metrics.serve(
        free_tcp_port,
        reg,
        {"/healthz": lambda: (True, {"age": 1}), "/readyz": lambda: (False, {"why": "no"})},
    )
    assert server is not None
    base = f"http://127.0.0.1:{free_tcp_port}"
    try:
        r = httpx.get(f"{base}/metrics")
        assert r.status_code == 200 and "celery_stack_beat_epoch" in r.text
        r = httpx.get(f"{base}/healthz")
        assert r.status_code == 200 and r.json() == {"ok": True, "age": 1}
        r = httpx.get(f"{base}/readyz")
        assert r.status_code == 503 and r.json()["ok"] is False
        for path in ("/", "/metricsx", "/healthz/x", "/status"):
            assert httpx.get(f"{base}{path}").status_code == 404, path
    finally:
        server.shutdown()
        server.server_close()


def test_priority_lists_follow_kombu_defaults():
    assert celery_metrics.priority_lists("scans", {}) == [
        "scans",
        "scans\x06\x163",
        "scans\x06\x166",
        "scans\x06\x169",
    ]
    assert celery_metrics.priority_lists("q", {"priority_steps": [0, 5], "sep": ":"}) == [
        "q",
        "q:5",
    ]


@pytest.mark.parametrize("fresh", [True, False])
def test_broker_collector_reads_queue_lengths_and_unacked(settings, tmp_path, fresh):
    client = redis_sync.Redis.from_url(settings.broker_url, decode_responses=True)
    keys = ["scans", "scans\x06\x166", "counters", "unacked"]
    client.delete(*keys)
    try:
        client.rpush("scans", "a", "b")
        client.rpush("scans\x06\x166", "c")
        client.rpush("counters", "d")
        for tag, rk in (("t1", "scans"), ("t2", "scans"), ("t3", "counters"), ("t4", "zzz")):
            client.hset("unacked", tag, json.dumps([{"body": "x"}, "", rk]))
        client.hset("unacked", "bad", "not json")
        beat_file = tmp_path / "alive"
        if fresh:
            beat_file.touch()
        coll = celery_metrics.BrokerCollector(
            client, ["scans", "counters"], {}, heartbeat_file=str(beat_file), fresh_within=15
        )
        got = {
            (s.name, s.labels.get("queue_name")): s.value
            for fam in coll.collect()
            for s in fam.samples
        }
        assert got[("celery_queue_length", "scans")] == 3
        assert got[("celery_queue_length", "counters")] == 1
        assert got[("celery_stack_queue_unacked_messages", "scans")] == 2
        assert got[("celery_stack_queue_unacked_messages", "counters")] == 1
        assert got[("celery_worker_up", None)] == 1
        assert got[("celery_stack_worker_consuming", "scans")] == (1 if fresh else 0)
    finally:
        client.delete(*keys)
        client.close()


def test_task_events_are_off_unless_asked_for(settings):
    """Our task metrics come from signals: events cost every task broker publishes for nobody,
    unless something consumes them (Flower)."""
    from celery_stack_core.celery_app import celery_config

    assert celery_config(settings)["worker_send_task_events"] is False
    assert celery_config(settings)["task_send_sent_event"] is False
    on = settings.model_copy(
        update={"celery": settings.celery.model_copy(update={"task_events": True})}
    )
    assert celery_config(on)["worker_send_task_events"] is True


def test_the_maintenance_worker_exposes_the_rule_families():
    metrics.RULE_ROWS.labels("r").inc()
    metrics.TASK_DUPLICATES_REFUSED.labels("maintenance.rule.r").inc()
    maintenance = families(metrics.role_of_worker("maintenance"))
    assert {"celery_stack_rule_rows", "celery_stack_task_duplicates_refused"} <= maintenance
    assert "celery_stack_rule_rows" not in families("api")


def test_task_labels_stay_bounded(monkeypatch):
    """Task names route by prefix (`scans.*`) and can come from a message header: past
    MAX_NAMES distinct names every new one is "other"; unknown queues are "other" too."""
    monkeypatch.setattr(celery_metrics, "_names", {})
    monkeypatch.setattr(celery_metrics, "MAX_NAMES", 50)
    labels = {celery_metrics._name(f"scans.made-up-{i}") for i in range(1000)}
    labels |= {celery_metrics._name(n) for n in ("no.such.queue.task", "", None)}
    assert len(labels) <= 50 + 1 and "other" in labels
    assert (
        celery_metrics._name("scans.made-up-0") == "scans.made-up-0"
    )  # the first ones keep theirs
    assert {celery_metrics._queue(q) for q in ("scans", "evil-1", "evil-2", None)} == {
        "scans",
        "other",
    }


# The issue's list (celery-exporter's names where it has one), as exposed: name, type, labels.
_TASK = ("name", "queue_name", "hostname")
ISSUE_FAMILIES = [
    *((f"celery_task_{e}", "counter", _TASK) for e in ("sent", "received", "started")),
    *((f"celery_task_{e}", "counter", _TASK) for e in ("succeeded", "retried", "rejected")),
    ("celery_task_revoked", "counter", _TASK),
    ("celery_task_failed", "counter", (*_TASK, "exception")),
    ("celery_task_runtime", "histogram", ("name", "queue_name")),
    ("celery_task_queue_wait", "histogram", ("name", "queue_name")),
    ("celery_stack_flush_lag_seconds", "gauge", ("counter",)),
    ("celery_stack_counter_buffered_entries", "gauge", ("counter",)),
    ("celery_stack_counter_db_fallbacks", "counter", ("target", "field")),
    ("celery_stack_outbox_oldest_unsent_age_seconds", "gauge", ()),
    ("celery_stack_scan_redeliveries", "counter", ()),
    ("celery_stack_scans_dead", "counter", ()),
    ("celery_stack_beat_is_leader", "gauge", ("election",)),
    ("celery_stack_beat_epoch", "gauge", ()),
    ("celery_stack_beat_transitions", "counter", ("event",)),  # failovers: event="acquired"
    ("celery_stack_beat_tick_lag_seconds", "gauge", ()),
    ("celery_stack_rule_lag_seconds", "gauge", ("rule",)),
]


@pytest.mark.parametrize(("name", "kind", "labels"), ISSUE_FAMILIES, ids=lambda x: str(x))
def test_the_issues_metric_families_exist_with_their_labels_in_a_role(name, kind, labels):
    from prometheus_client.metrics import MetricWrapperBase

    (metric,) = [
        m for m in vars(metrics).values() if isinstance(m, MetricWrapperBase) and m._name == name
    ]
    assert (metric._type, tuple(metric._labelnames)) == (kind, labels)
    roles = [r for r in metrics.ROLE_FAMILIES if name.startswith(metrics.prefixes_of(r))]
    assert roles, f"{name}: no process exports it"


class _Task:
    name = "scans.run"

    class request:
        delivery_info = {"routing_key": "scans"}


def test_retried_rejected_and_revoked_signals_count_with_their_labels():
    """The handlers take what Celery's signals send (task_retry: sender + request; task_rejected:
    the message; task_revoked: the request)."""

    def value(counter) -> float:
        return counter.labels("scans.run", "scans", celery_metrics._HOST)._value.get()

    before = [value(c) for c in (metrics.TASK_RETRIED, metrics.TASK_REJECTED, metrics.TASK_REVOKED)]
    celery_metrics._retried(sender=_Task(), request=_Task.request, reason=None, einfo=None)

    class Message:
        headers = {"task": "scans.run"}
        delivery_info = {"routing_key": "scans"}

    celery_metrics._rejected(message=Message(), exc=None)

    class Request:  # celery.worker.request.Request
        name = "scans.run"
        delivery_info = {"routing_key": "scans"}

    celery_metrics._revoked(request=Request(), terminated=False, signum=None, expired=True)
    after = [value(c) for c in (metrics.TASK_RETRIED, metrics.TASK_REJECTED, metrics.TASK_REVOKED)]
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 1, 1]
