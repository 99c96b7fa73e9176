"""Alert rules as data: one `Alert` per alert, thresholds from a `Thresholds`, rendered into a
Prometheus rule file (the chart's PrometheusRule and k8s/monitoring/ use the same groups).

`Thresholds()` is production; `Thresholds.for_tests()` keeps every expression and shortens the
thresholds and `for:` durations so the e2e test sees alerts fire within seconds.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

RUNBOOKS = "https://github.com/celery-stack/celery-stack/blob/main/docs/runbooks.md"
# kube-state-metrics series of our pods; the chart swaps the namespace for the release's.
KSM_NAMESPACE = "celery-stack"
KSM_CONTAINERS = "api|beat|worker|janitor|operator|migrations"


@dataclass(frozen=True)
class Thresholds:
    backlog_min: int = 100  # messages: below this a growing queue is not worth a page
    backlog_for: str = "15m"
    backlog_window: str = "10m"
    worker_lookback: str = "1h"  # a queue had workers within this long and has none now
    workers_down_for: str = "2m"
    not_consuming_for: str = "5m"
    leader_missing_for: str = "1m"
    tick_lag_seconds: float = 30
    tick_stale_seconds: float = 120
    slot_lag_for: str = "5m"
    failure_ratio: float = 0.10
    failure_window: str = "10m"
    failure_for: str = "10m"
    flush_lag_seconds: float = 60
    flush_lag_for: str = "2m"
    outbox_age_seconds: float = 120
    outbox_for: str = "5m"
    orphans_window: str = "30m"
    orphans_for: str = "30m"
    janitor_stale_seconds: float = 3 * 3600
    leaked_window: str = "15m"
    dead_window: str = "30m"
    rule_lag_seconds: float = 3600
    rule_for: str = "15m"
    restarts: int = 3
    restarts_window: str = "30m"
    api_5xx_ratio: float = 0.05
    api_5xx_window: str = "5m"
    api_5xx_for: str = "5m"
    latency_slo_seconds: str = "0.5"  # a histogram bucket boundary of http_request_duration
    latency_slo_target: float = 0.99
    severity_page: str = "critical"
    severity_ticket: str = "warning"
    extra_labels: dict[str, str] = field(default_factory=dict)

    @classmethod
    def for_tests(cls) -> Thresholds:
        """Same expressions, seconds instead of minutes (tests/e2e/test_prometheus.py). The
        `for` durations are 20 s, not less: the test must see each alert pending before it
        fires, and a loaded machine's watch loop took longer than a 5 s pending state lasted."""
        return replace(
            cls(),
            workers_down_for="20s",
            not_consuming_for="20s",
            worker_lookback="10m",
            flush_lag_seconds=8,
            flush_lag_for="20s",
        )


@dataclass(frozen=True)
class Alert:
    name: str
    expr: str
    for_: str
    severity: str
    summary: str
    description: str
    runbook: str  # anchor in docs/runbooks.md
    metrics: tuple[str, ...]  # the series it reads (e2e: "returns series once these exist")

    def rule(self, t: Thresholds) -> dict[str, object]:
        rule: dict[str, object] = {"alert": self.name, "expr": self.expr}
        if self.for_ not in ("", "0s"):
            rule["for"] = self.for_
        rule["labels"] = {"severity": self.severity, **t.extra_labels}
        rule["annotations"] = {
            "summary": self.summary,
            "description": self.description,
            "runbook_url": f"{RUNBOOKS}#{self.runbook}",
        }
        return rule


def _celery(t: Thresholds) -> list[Alert]:
    consuming = "celery_stack_worker_consuming"
    failed = f"sum by (queue_name) (rate(celery_task_failed_total[{t.failure_window}]))"
    started = f"sum by (queue_name) (rate(celery_task_started_total[{t.failure_window}]))"
    return [
        Alert(
            "CeleryStackQueueBacklogGrowing",
            f"max by (queue_name) (celery_queue_length) > {t.backlog_min}\n"
            f"and max by (queue_name) (delta(celery_queue_length[{t.backlog_window}])) > 0",
            t.backlog_for,
            t.severity_ticket,
            "Queue {{ $labels.queue_name }} backlog keeps growing",
            "{{ $labels.queue_name }} holds {{ $value }} messages and grew over the last "
            f"{t.backlog_window}: workers take less than producers send.",
            "queue-backlog-growing",
            ("celery_queue_length",),
        ),
        Alert(
            "CeleryStackWorkersDown",
            f"count by (queue_name) (max_over_time({consuming}[{t.worker_lookback}]))\n"
            f"unless count by (queue_name) ({consuming})",
            t.workers_down_for,
            t.severity_page,
            "No worker runs for queue {{ $labels.queue_name }}",
            "Queue {{ $labels.queue_name }} had workers within the last "
            f"{t.worker_lookback} and none answers a scrape now.",
            "workers-down",
            (consuming,),
        ),
        Alert(
            "CeleryStackWorkersNotConsuming",
            f"max by (queue_name) ({consuming}) == 0",
            t.not_consuming_for,
            t.severity_page,
            "Workers of {{ $labels.queue_name }} run but consume nothing",
            "Every worker of {{ $labels.queue_name }} is up, but none has a fresh consuming "
            "heartbeat (broker connection lost, or consumer stopped).",
            "workers-not-consuming",
            (consuming,),
        ),
        Alert(
            "CeleryStackTaskFailureRatio",
            f"{failed}\n/ ({started} > 0) > {t.failure_ratio}",
            t.failure_for,
            t.severity_ticket,
            "Tasks of {{ $labels.queue_name }} fail often",
            "{{ $value | humanizePercentage }} of the tasks started on "
            f"{{{{ $labels.queue_name }}}} over {t.failure_window} raised.",
            "task-failure-ratio",
            ("celery_task_failed_total", "celery_task_started_total"),
        ),
    ]


def _ours(t: Thresholds) -> list[Alert]:
    return [
        Alert(
            "CeleryStackBeatLeaderMissing",
            "max(celery_stack_beat_is_leader) < 1 or absent(celery_stack_beat_is_leader)",
            t.leader_missing_for,
            t.severity_page,
            "No beat replica leads: nothing is scheduled",
            "No beat replica reports is_leader=1: flushes, relays and sweeps are not sent.",
            "beat-leader-missing",
            ("celery_stack_beat_is_leader",),
        ),
        Alert(
            "CeleryStackBeatSlotLag",
            f"max(celery_stack_beat_tick_lag_seconds) > {t.tick_lag_seconds:g}\n"
            "or (time() - max(celery_stack_beat_last_tick_timestamp_seconds > 0))"
            f" > {t.tick_stale_seconds:g}",
            t.slot_lag_for,
            t.severity_page,
            "Beat sends its slots late",
            "The leader's ticks start late or stopped ({{ $value | humanizeDuration }}).",
            "beat-slot-lag",
            ("celery_stack_beat_tick_lag_seconds", "celery_stack_beat_last_tick_timestamp_seconds"),
        ),
        Alert(
            "CeleryStackCounterFlushLag",
            "max by (counter) (celery_stack_counter_pending_age_seconds)"
            f" > {t.flush_lag_seconds:g}",
            t.flush_lag_for,
            t.severity_page,
            "Counter {{ $labels.counter }} is not flushed",
            "The oldest buffered increment of {{ $labels.counter }} is "
            "{{ $value | humanizeDuration }} old: flushes do not run or do not finish.",
            "counter-flush-lag",
            ("celery_stack_counter_pending_age_seconds",),
        ),
        Alert(
            "CeleryStackOutboxOldestUnsent",
            f"max(celery_stack_outbox_oldest_unsent_age_seconds) > {t.outbox_age_seconds:g}",
            t.outbox_for,
            t.severity_page,
            "Outbox rows stay unsent",
            "The oldest unsent outbox row is {{ $value | humanizeDuration }} old: the API cannot "
            "publish and the relay does not catch up.",
            "outbox-oldest-unsent",
            ("celery_stack_outbox_oldest_unsent_age_seconds",),
        ),
        Alert(
            "CeleryStackDeadScans",
            f"sum(increase(celery_stack_scans_dead_total[{t.dead_window}])) > 0",
            "",
            t.severity_ticket,
            "Scans went dead",
            f"Scans reached the redelivery cap in the last {t.dead_window}: their rows say why.",
            "dead-scans",
            ("celery_stack_scans_dead_total",),
        ),
    ]


def _janitor(t: Thresholds) -> list[Alert]:
    # The last run of each sweep as recorded in janitor_runs and exported by the maintenance
    # worker (celery_stack_core.sweeps.runs): CronJob, CLI and API runs alike, each once; the
    # replicas of the maintenance worker export the same values, hence `max by (sweep)`.
    found = "max by (sweep) (celery_stack_janitor_last_run_found)"
    removed = "max by (sweep) (celery_stack_janitor_last_run_removed)"
    return [
        Alert(
            "CeleryStackOrphansPresent",
            f"{found}\n- {removed} > 0",
            t.orphans_for,
            t.severity_ticket,
            "Janitor sweep {{ $labels.sweep }} leaves orphans behind",
            "Every run of sweep {{ $labels.sweep }} over "
            f"{t.orphans_for} left items it found: the last left {{{{ $value }}}}.",
            "orphans-present",
            ("celery_stack_janitor_last_run_found", "celery_stack_janitor_last_run_removed"),
        ),
        Alert(
            "CeleryStackJanitorNotRunning",
            "time() - max by (sweep) (celery_stack_janitor_last_run_timestamp_seconds)"
            f" > {t.janitor_stale_seconds:g}",
            "",
            t.severity_ticket,
            "Janitor sweep {{ $labels.sweep }} has not run",
            "Sweep {{ $labels.sweep }} last ran {{ $value | humanizeDuration }} ago.",
            "orphans-present",
            ("celery_stack_janitor_last_run_timestamp_seconds",),
        ),
        Alert(
            "CeleryStackLockLeaked",
            # one counter in Redis, exported by every maintenance worker replica: max, not sum
            f"max(increase(celery_stack_locks_leaked_total[{t.leaked_window}])) > 0",
            "",
            t.severity_ticket,
            "A lock outlived its owner",
            f"The janitor found locks whose owner is gone in the last {t.leaked_window}.",
            "lock-leaked",
            ("celery_stack_locks_leaked_total",),
        ),
        Alert(
            "CeleryStackMaintenanceRuleLag",
            f"max by (rule) (celery_stack_rule_lag_seconds) > {t.rule_lag_seconds:g}",
            t.rule_for,
            t.severity_ticket,
            "Maintenance rule {{ $labels.rule }} falls behind",
            "Rule {{ $labels.rule }}'s oldest eligible row waits {{ $value | humanizeDuration }}.",
            "maintenance-rule-lag",
            ("celery_stack_rule_lag_seconds",),
        ),
        Alert(
            "CeleryStackMaintenanceRuleFailing",
            f"sum by (rule) (increase(celery_stack_rule_failures_total[{t.rule_for}])) > 0",
            "",
            t.severity_ticket,
            "Maintenance rule {{ $labels.rule }} fails",
            "Rule {{ $labels.rule }} failed in the last " + t.rule_for + ".",
            "maintenance-rule-lag",
            ("celery_stack_rule_failures_total",),
        ),
    ]


def _kubernetes(t: Thresholds) -> list[Alert]:
    sel = f'namespace="{KSM_NAMESPACE}", container=~"{KSM_CONTAINERS}"'
    restarts = f"increase(kube_pod_container_status_restarts_total{{{sel}}}[{t.restarts_window}])"
    return [
        Alert(
            "CeleryStackPodRestarting",
            f"max by (namespace, pod, container) ({restarts}) >= {t.restarts}",
            "",
            t.severity_ticket,
            "{{ $labels.pod }}/{{ $labels.container }} restarts",
            "{{ $labels.container }} in {{ $labels.pod }} restarted at least "
            f"{t.restarts} times in {t.restarts_window}.",
            "restarts-and-oomkills",
            ("kube_pod_container_status_restarts_total",),
        ),
        Alert(
            "CeleryStackOOMKilled",
            "max by (namespace, pod, container) "
            f'(kube_pod_container_status_last_terminated_reason{{{sel}, reason="OOMKilled"}})\n'
            f"and on (namespace, pod, container) ({restarts} > 0)",
            "",
            t.severity_ticket,
            "{{ $labels.pod }}/{{ $labels.container }} was OOMKilled",
            "{{ $labels.container }} in {{ $labels.pod }} restarted after an OOM kill.",
            "restarts-and-oomkills",
            (
                "kube_pod_container_status_last_terminated_reason",
                "kube_pod_container_status_restarts_total",
            ),
        ),
    ]


@dataclass(frozen=True)
class BurnRate:
    """A multiwindow burn-rate alert: the error budget burns `factor` times too fast over both
    the `long` window and the `short` one (which makes it stop soon after the burn stops)."""

    factor: float
    long: str
    short: str
    for_: str


FAST_BURN = BurnRate(factor=14.4, long="1h", short="5m", for_="2m")  # 2% of a 30-day budget/h
SLOW_BURN = BurnRate(factor=6, long="6h", short="30m", for_="15m")  # 5% of it in 6h


def _slo_ratio(t: Thresholds, window: str) -> str:
    """Share of API requests slower than the SLO over `window`."""
    duration = "celery_stack_http_request_duration_seconds"
    fast = f'sum(rate({duration}_bucket{{le="{t.latency_slo_seconds}"}}[{window}]))'
    total = f"sum(rate({duration}_count[{window}]))"
    return f"(1 - {fast} / ({total} > 0))"


def _api(t: Thresholds) -> list[Alert]:
    budget = 1 - t.latency_slo_target
    requests = "celery_stack_http_requests_total"
    errors = f'sum(rate({requests}{{code="5xx"}}[{t.api_5xx_window}]))'
    total = f"sum(rate({requests}[{t.api_5xx_window}]))"

    def burn(name: str, rate: BurnRate, sev: str) -> Alert:
        limit = round(rate.factor * budget, 6)
        return Alert(
            name,
            f"{_slo_ratio(t, rate.long)} > {limit:g}\nand {_slo_ratio(t, rate.short)} > {limit:g}",
            rate.for_,
            sev,
            f"API latency SLO budget burns {rate.factor:g}x too fast",
            f"More than {limit:.1%} of API requests took over {t.latency_slo_seconds}s over "
            f"{rate.long} and {rate.short} (SLO: {t.latency_slo_target:.0%} under it).",
            "api-latency-slo-burn",
            ("celery_stack_http_request_duration_seconds_bucket",),
        )

    return [
        Alert(
            "CeleryStackApi5xxRatio",
            f"{errors}\n/ ({total} > 0) > {t.api_5xx_ratio}",
            t.api_5xx_for,
            t.severity_page,
            "The API answers 5xx",
            "{{ $value | humanizePercentage }} of API requests failed with 5xx over "
            f"{t.api_5xx_window}.",
            "api-5xx-ratio",
            ("celery_stack_http_requests_total",),
        ),
        burn("CeleryStackApiLatencyBudgetBurnFast", FAST_BURN, t.severity_page),
        burn("CeleryStackApiLatencyBudgetBurnSlow", SLOW_BURN, t.severity_ticket),
    ]


GROUPS = {
    "celery-stack.celery": _celery,
    "celery-stack.ours": _ours,
    "celery-stack.janitor": _janitor,
    "celery-stack.kubernetes": _kubernetes,
    "celery-stack.api": _api,
}


def alerts(t: Thresholds | None = None) -> list[Alert]:
    t = t or Thresholds()
    return [a for build in GROUPS.values() for a in build(t)]


def rule_file(t: Thresholds | None = None) -> dict[str, object]:
    """The Prometheus rule file: {"groups": [{"name", "rules"}]}."""
    t = t or Thresholds()
    return {
        "groups": [
            {"name": name, "rules": [a.rule(t) for a in build(t)]} for name, build in GROUPS.items()
        ]
    }
