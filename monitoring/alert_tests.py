"""promtool unit tests, one case (or more) per alert, as data: input series, when to look, the
labels expected and the text `{{ $value }}` renders to. The expected annotations are the alert's
own with labels and value filled in, so a case fails on any change of labels or wording.

Rendered into monitoring/tests/alerts.test.yaml (generated, checked for drift); run with
`promtool test rules` by tests/monitoring/test_rules.py.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from monitoring import alerts


@dataclass(frozen=True)
class Case:
    alert: str
    series: dict[str, str]  # series selector -> promtool values notation (1m steps)
    eval_time: str
    fires: list[dict[str, str]] = field(default_factory=list)  # labels of each firing alert
    value: str = ""  # what {{ $value | ... }} renders to
    quiet_before: str = ""  # an eval time at which the alert must not fire yet


CASES = [
    Case(
        "CeleryStackQueueBacklogGrowing",
        {
            'celery_queue_length{queue_name="scans", hostname="w1"}': "0+20x40",
            'celery_queue_length{queue_name="counters", hostname="w2"}': "500x40",  # flat: no
        },
        "30m",
        [{"queue_name": "scans"}],
        value="600",
        quiet_before="15m",
    ),
    Case(
        "CeleryStackWorkersDown",
        {
            'celery_stack_worker_consuming{queue_name="counters", hostname="w1"}': "1x10",
            'celery_stack_worker_consuming{queue_name="scans", hostname="w2"}': "1x30",
        },
        "20m",
        [{"queue_name": "counters"}],
        quiet_before="10m",
    ),
    Case(
        "CeleryStackWorkersNotConsuming",
        {
            'celery_stack_worker_consuming{queue_name="scans", hostname="w1"}': "0x10",
            'celery_stack_worker_consuming{queue_name="counters", hostname="w2"}': "0x10",
            'celery_stack_worker_consuming{queue_name="counters", hostname="w3"}': "1x10",
        },
        "8m",
        [{"queue_name": "scans"}],
        quiet_before="3m",
    ),
    Case(
        "CeleryStackTaskFailureRatio",
        {
            'celery_task_failed_total{queue_name="scans", name="scans.run", hostname="w1", '
            'exception="Boom"}': "0+3x30",
            'celery_task_started_total{queue_name="scans", name="scans.run", hostname="w1"}': (
                "0+10x30"
            ),
            'celery_task_started_total{queue_name="counters", name="counters.flush", '
            'hostname="w2"}': "0+10x30",
        },
        "25m",
        [{"queue_name": "scans"}],
        value="30%",
        quiet_before="5m",
    ),
    Case(
        "CeleryStackBeatLeaderMissing",
        {
            'celery_stack_beat_is_leader{election="redis", instance="b1"}': "1 1 0x10",
            'celery_stack_beat_is_leader{election="redis", instance="b2"}': "0x12",
        },
        "6m",
        [{}],
        quiet_before="1m",
    ),
    Case(
        "CeleryStackBeatSlotLag",
        {"celery_stack_beat_tick_lag_seconds": "45x10"},
        "8m",
        [{}],
        value="45s",
        quiet_before="2m",
    ),
    Case(
        "CeleryStackCounterFlushLag",
        {
            'celery_stack_counter_pending_age_seconds{counter="post:views"}': "0+60x10",
            'celery_stack_counter_pending_age_seconds{counter="article:views"}': "1x10",
        },
        "6m",
        [{"counter": "post:views"}],
        value="6m 0s",
        quiet_before="3m",
    ),
    Case(
        "CeleryStackOutboxOldestUnsent",
        {"celery_stack_outbox_oldest_unsent_age_seconds": "0+60x15"},
        "10m",
        [{}],
        value="10m 0s",
        quiet_before="6m",
    ),
    Case(
        "CeleryStackDeadScans",
        {"celery_stack_scans_dead_total": "0x5 1x10"},
        "10m",
        [{}],
        quiet_before="4m",
    ),
    Case(
        "CeleryStackOrphansPresent",
        {
            # two maintenance worker replicas export the same record of the last run
            'celery_stack_janitor_last_run_found{sweep="results",pod="m1"}': "10x60",
            'celery_stack_janitor_last_run_found{sweep="results",pod="m2"}': "10x60",
            'celery_stack_janitor_last_run_removed{sweep="results",pod="m1"}': "5x60",
            'celery_stack_janitor_last_run_removed{sweep="results",pod="m2"}': "5x60",
            'celery_stack_janitor_last_run_found{sweep="locks",pod="m1"}': "2x60",
            'celery_stack_janitor_last_run_removed{sweep="locks",pod="m1"}': "2x60",
        },
        "60m",
        [{"sweep": "results"}],
        value="5",  # one run's count, not the sum of the replicas' copies of it
        quiet_before="20m",
    ),
    Case(
        "CeleryStackJanitorNotRunning",
        {
            # the record of the last run, as two maintenance worker replicas export it
            'celery_stack_janitor_last_run_timestamp_seconds{sweep="results",pod="m1"}': "0x300",
            'celery_stack_janitor_last_run_timestamp_seconds{sweep="results",pod="m2"}': "0x300",
            'celery_stack_janitor_last_run_timestamp_seconds{sweep="locks",pod="m1"}': "0+60x300",
            'celery_stack_janitor_last_run_timestamp_seconds{sweep="locks",pod="m2"}': "0+60x300",
        },
        "4h",
        [{"sweep": "results"}],
        value="4h 0m 0s",
        quiet_before="2h",
    ),
    Case(
        "CeleryStackLockLeaked",
        {
            # two maintenance worker replicas export the one counter kept in Redis
            'celery_stack_locks_leaked_total{pod="m1"}': "0x5 1x10",
            'celery_stack_locks_leaked_total{pod="m2"}': "0x5 1x10",
        },
        "10m",
        [{}],
        quiet_before="4m",
    ),
    Case(
        "CeleryStackMaintenanceRuleLag",
        {
            'celery_stack_rule_lag_seconds{rule="expire_orders"}': "4000x30",
            'celery_stack_rule_lag_seconds{rule="rollup"}': "10x30",
        },
        "20m",
        [{"rule": "expire_orders"}],
        value="1h 6m 40s",
        quiet_before="10m",
    ),
    Case(
        "CeleryStackMaintenanceRuleFailing",
        {
            'celery_stack_rule_failures_total{rule="expire_orders"}': "0x5 1x10",
            'celery_stack_rule_failures_total{rule="rollup"}': "0x15",
        },
        "10m",
        [{"rule": "expire_orders"}],
        quiet_before="4m",
    ),
    Case(
        "CeleryStackPodRestarting",
        {
            'kube_pod_container_status_restarts_total{namespace="celery-stack", '
            'pod="cs-worker-scans-1", container="worker"}': "0+1x30",
            'kube_pod_container_status_restarts_total{namespace="other", '
            'pod="x-1", container="worker"}': "0+1x30",
        },
        "30m",
        [{"namespace": "celery-stack", "pod": "cs-worker-scans-1", "container": "worker"}],
    ),
    Case(
        "CeleryStackOOMKilled",
        {
            'kube_pod_container_status_last_terminated_reason{namespace="celery-stack", '
            'pod="cs-api-1", container="api", reason="OOMKilled"}': "1x30",
            'kube_pod_container_status_restarts_total{namespace="celery-stack", '
            'pod="cs-api-1", container="api"}': "0x10 1x20",
        },
        "20m",
        [{"namespace": "celery-stack", "pod": "cs-api-1", "container": "api"}],
        quiet_before="5m",
    ),
    Case(
        "CeleryStackApi5xxRatio",
        {
            'celery_stack_http_requests_total{route="/api/v1/scans", method="POST", code="5xx"}': (
                "0+10x20"
            ),
            'celery_stack_http_requests_total{route="/api/v1/scans", method="POST", code="2xx"}': (
                "0+10x20"
            ),
        },
        "15m",
        [{}],
        value="50%",
        quiet_before="3m",
    ),
    Case(
        "CeleryStackApiLatencyBudgetBurnFast",
        {
            'celery_stack_http_request_duration_seconds_bucket{route="/x", le="0.5"}': ("0+50x120"),
            'celery_stack_http_request_duration_seconds_bucket{route="/x", le="+Inf"}': (
                "0+100x120"
            ),
            'celery_stack_http_request_duration_seconds_count{route="/x"}': "0+100x120",
        },
        "90m",
        [{}],
        quiet_before="1m",
    ),
    Case(
        "CeleryStackApiLatencyBudgetBurnSlow",
        {
            'celery_stack_http_request_duration_seconds_bucket{route="/x", le="0.5"}': ("0+50x120"),
            'celery_stack_http_request_duration_seconds_bucket{route="/x", le="+Inf"}': (
                "0+100x120"
            ),
            'celery_stack_http_request_duration_seconds_count{route="/x"}': "0+100x120",
        },
        "90m",
        [{}],
        quiet_before="10m",
    ),
]

_LABEL = re.compile(r"\{\{ \$labels\.(\w+) \}\}")
_VALUE = re.compile(r"\{\{ \$value( \| \w+)? \}\}")


def _expand(text: str, labels: dict[str, str], value: str) -> str:
    text = _LABEL.sub(lambda m: labels.get(m.group(1), ""), text)
    return _VALUE.sub(value, text)


def _expected(alert: alerts.Alert, labels: dict[str, str], value: str) -> dict[str, object]:
    rule = alert.rule(alerts.Thresholds())
    annotations = rule["annotations"]
    assert isinstance(annotations, dict)
    return {
        "exp_labels": {**labels, **rule["labels"]},  # type: ignore[dict-item]
        "exp_annotations": {k: _expand(v, labels, value) for k, v in annotations.items()},
    }


def test_file(rule_file: str) -> dict[str, object]:
    by_name = {a.name: a for a in alerts.alerts()}
    tests = []
    for case in CASES:
        alert = by_name[case.alert]
        checks: list[dict[str, object]] = []
        if case.quiet_before:
            checks.append({"eval_time": case.quiet_before, "alertname": alert.name})
        checks.append(
            {
                "eval_time": case.eval_time,
                "alertname": alert.name,
                "exp_alerts": [_expected(alert, labels, case.value) for labels in case.fires],
            }
        )
        series = [{"series": s, "values": v} for s, v in case.series.items()]
        tests.append(
            {
                "name": alert.name,
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": checks,
            }
        )
    return {"rule_files": [rule_file], "evaluation_interval": "1m", "tests": tests}


def untested() -> list[str]:
    """Alerts without a case: the rule test fails on any."""
    covered = {c.alert for c in CASES}
    return [a.name for a in alerts.alerts() if a.name not in covered]
