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
