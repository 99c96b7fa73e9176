"""The four Grafana dashboards, written with grafana-foundation-sdk (Grafana's own SDK).

Each panel is a title, a unit and PromQL queries; `DASHBOARDS` maps a file stem to a builder and
`queries()` lists every panel query, which tests/e2e/test_prometheus.py evaluates against a real
Prometheus.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

DS = DataSourceRef(type_val="prometheus", uid="${datasource}")
TAGS = ["celery-stack"]
RATE = "5m"  # rate() window of every panel


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str
    queries: tuple[Query, ...]
    description: str = ""
    kind: str = "timeseries"  # or "stat"
    width: int = 12

    def build(self, panel_id: int) -> timeseries.Panel | stat.Panel:
        panel = timeseries.Panel() if self.kind == "timeseries" else stat.Panel()
        panel.id(panel_id).title(self.title).unit(self.unit).datasource(DS)
        panel.height(8 if self.kind == "timeseries" else 4).span(self.width)
        if self.description:
            panel.description(self.description)
        for ref, q in zip("ABCDEFGH", self.queries, strict=False):
            target = prometheus.Dataquery().expr(q.expr).ref_id(ref)
            if q.legend:
                target.legend_format(q.legend)
            panel.with_target(target)
        return panel


def _q(expr: str, legend: str = "") -> tuple[Query, ...]:
    return (Query(expr, legend),)


def _quantiles(metric: str, by: str) -> tuple[Query, ...]:
    return tuple(
        Query(
            f"histogram_quantile({q}, sum by ({by}, le) (rate({metric}_bucket[{RATE}])))",
            f"p{int(q * 100)} {{{{{by}}}}}",
        )
        for q in (0.5, 0.99)
    )


def overview() -> list[tuple[str, list[Panel]]]:
    return [
        (
            "Tasks",
            [
                Panel(
                    "Throughput (tasks started/s)",
                    "ops",
                    _q(
                        f"sum by (queue_name) (rate(celery_task_started_total[{RATE}]))",
                        "{{queue_name}}",
                    ),
                ),
                Panel(
                    "Failures (tasks failed/s)",
                    "ops",
                    _q(
                        f"sum by (queue_name, exception) (rate(celery_task_failed_total[{RATE}]))",
                        "{{queue_name}} {{exception}}",
                    ),
                ),
                Panel(
                    "Backlog (messages waiting, all priorities)",
                    "short",
                    (
                        Query("max by (queue_name) (celery_queue_length)", "{{queue_name}}"),
                        Query(
                            "max by (queue_name) (celery_stack_queue_unacked_messages)",
                            "unacked {{queue_name}}",
                        ),
                    ),
                ),
                Panel(
                    "Task runtime p50 / p99 per queue",
                    "s",
                    _quantiles("celery_task_runtime", "queue_name"),
                ),
                Panel(
                    "Queue wait p50 / p99 (sent -> started)",
                    "s",
                    _quantiles("celery_task_queue_wait", "queue_name"),
                ),
                Panel(
                    "Workers up / consuming",
                    "short",
                    (
                        Query(
                            "count by (queue_name) (celery_stack_worker_consuming)",
                            "up {{queue_name}}",
                        ),
                        Query(
                            "sum by (queue_name) (celery_stack_worker_consuming)",
                            "consuming {{queue_name}}",
                        ),
                    ),
                ),
            ],
        ),
        (
            "API",
            [
                Panel(
                    "API requests/s by status class",
                    "reqps",
                    _q(
                        f"sum by (code) (rate(celery_stack_http_requests_total[{RATE}]))",
                        "{{code}}",
                    ),
                ),
                Panel(
                    "API latency p50 / p99 per route",
                    "s",
                    _quantiles("celery_stack_http_request_duration_seconds", "route"),
                ),
            ],
        ),
    ]


def counters() -> list[tuple[str, list[Panel]]]:
    return [
        (
            "Ingest",
            [
                Panel(
                    "Ingest rate (increments/s)",
                    "ops",
                    _q(
                        "sum by (target, field) "
                        f"(rate(celery_stack_counter_increments_total[{RATE}]))",
                        "{{target}} {{field}}",
                    ),
                ),
                Panel(
                    "Database fallbacks/s (Redis down)",
                    "ops",
                    _q(
                        "sum by (target, field) "
                        f"(rate(celery_stack_counter_db_fallbacks_total[{RATE}]))",
                        "{{target}} {{field}}",
                    ),
                ),
            ],
        ),
        (
            "Flush",
            [
                Panel(
                    "Flush lag (oldest unapplied increment)",
                    "s",
                    (
                        Query(
                            "max by (counter) (celery_stack_counter_pending_age_seconds)",
                            "pending {{counter}}",
                        ),
                        Query("max(celery_stack_flush_lag_seconds)", "at last flush"),
                    ),
                ),
                Panel(
                    "Buffered entries",
                    "short",
                    _q("sum(max by (counter) (celery_stack_counter_buffered_entries))", "buffered"),
                ),
                Panel(
                    "Batch size (rows applied per batch)",
                    "short",
                    _q(
                        f"sum(rate(celery_stack_flush_rows_applied_total[{RATE}]))\n/ "
                        f'sum(rate(celery_stack_flush_batches_total{{outcome="applied"}}[{RATE}]))',
                        "rows/batch",
                    ),
                ),
                Panel(
                    "Dropped rows/s and flush failures/s",
                    "ops",
                    (
                        Query(
                            f"sum(rate(celery_stack_flush_rows_dropped_total[{RATE}]))", "dropped"
                        ),
                        Query(f"sum(rate(celery_stack_flush_failures_total[{RATE}]))", "failures"),
                    ),
                ),
                Panel(
                    "Flush duration p50 / p99",
                    "s",
                    (
                        Query(
                            "histogram_quantile(0.5, sum by (le) "
                            f"(rate(celery_stack_flush_duration_seconds_bucket[{RATE}])))",
                            "p50",
                        ),
                        Query(
                            "histogram_quantile(0.99, sum by (le) "
                            f"(rate(celery_stack_flush_duration_seconds_bucket[{RATE}])))",
                            "p99",
                        ),
                    ),
                ),
                Panel(
                    "Recount drift corrections/s",
                    "ops",
                    _q(
                        "sum by (target, source) "
                        f"(rate(celery_stack_recount_drift_corrections_total[{RATE}]))",
                        "{{target}} {{source}}",
                    ),
                ),
            ],
        ),
    ]


def scans() -> list[tuple[str, list[Panel]]]:
    return [
        (
            "Scans",
            [
                Panel(
                    "Dispatch latency p50 / p99 (commit -> worker start)",
                    "s",
                    (
                        Query(
                            "histogram_quantile(0.5, sum by (le) "
                            f"(rate(celery_stack_scan_dispatch_latency_seconds_bucket[{RATE}])))",
                            "p50",
                        ),
                        Query(
                            "histogram_quantile(0.99, sum by (le) "
                            f"(rate(celery_stack_scan_dispatch_latency_seconds_bucket[{RATE}])))",
                            "p99",
                        ),
                    ),
                ),
                Panel(
                    "Scan duration p50 / p99",
                    "s",
                    (
                        Query(
                            "histogram_quantile(0.5, sum by (le) "
                            f"(rate(celery_stack_scan_duration_seconds_bucket[{RATE}])))",
                            "p50",
                        ),
                        Query(
                            "histogram_quantile(0.99, sum by (le) "
                            f"(rate(celery_stack_scan_duration_seconds_bucket[{RATE}])))",
                            "p99",
                        ),
                    ),
                ),
                Panel(
                    "Outcomes/s",
                    "ops",
                    (
                        Query(f"sum(rate(celery_stack_scans_created_total[{RATE}]))", "created"),
                        Query(
                            f"sum by (status) (rate(celery_stack_scans_finished_total[{RATE}]))",
                            "{{status}}",
                        ),
                    ),
                ),
                Panel(
                    "Dead scans and redeliveries (per hour)",
                    "short",
                    (
                        Query("sum(increase(celery_stack_scans_dead_total[1h]))", "dead"),
                        Query(
                            "sum(increase(celery_stack_scan_redeliveries_total[1h]))",
                            "redelivered",
                        ),
                    ),
                ),
                Panel(
                    "Outbox: oldest unsent age and backlog",
                    "s",
                    (
                        Query("max(celery_stack_outbox_oldest_unsent_age_seconds)", "oldest"),
                        Query("max(celery_stack_outbox_backlog)", "unsent rows"),
                    ),
                ),
                Panel(
                    "Scanner fetch errors/s",
                    "ops",
                    _q(
                        f"sum by (error) (rate(celery_stack_scanner_fetch_errors_total[{RATE}]))",
                        "{{error}}",
                    ),
                ),
            ],
        ),
    ]


def beat_janitor() -> list[tuple[str, list[Panel]]]:
    return [
        (
            "Beat",
            [
                Panel(
                    "Leader (replicas leading)",
                    "short",
                    _q("sum(celery_stack_beat_is_leader)", "leaders"),
                    kind="stat",
                    width=6,
                ),
                Panel(
                    "Epoch",
                    "short",
                    _q("max(celery_stack_beat_epoch)", "epoch"),
                    kind="stat",
                    width=6,
                ),
                Panel(
                    "Failovers (leadership acquired, per hour)",
                    "short",
                    _q(
                        'sum(increase(celery_stack_beat_transitions_total{event="acquired"}[1h]))',
                        "acquired",
                    ),
                    kind="stat",
                    width=6,
                ),
                Panel(
                    "Tick lag",
                    "s",
                    _q("max(celery_stack_beat_tick_lag_seconds)", "tick lag"),
                    kind="stat",
                    width=6,
                ),
                Panel(
                    "Slot send lateness p99 per entry",
                    "s",
                    _q(
                        "histogram_quantile(0.99, sum by (entry, le) "
                        f"(rate(celery_stack_beat_send_lateness_seconds_bucket[{RATE}])))",
                        "{{entry}}",
                    ),
                ),
                Panel(
                    "Slots by outcome/s",
                    "ops",
                    _q(
                        f"sum by (outcome) (rate(celery_stack_beat_slots_total[{RATE}]))",
                        "{{outcome}}",
                    ),
                ),
            ],
        ),
        (
            "Janitor",
            [
                # The last run of each sweep, wherever it ran (CronJob, CLI, API job), from
                # janitor_runs via the maintenance worker; max folds its replicas.
                Panel(
                    "Sweeps: found and removed by the last run",
                    "short",
                    (
                        Query(
                            "max by (sweep) (celery_stack_janitor_last_run_found)",
                            "found {{sweep}}",
                        ),
                        Query(
                            "max by (sweep) (celery_stack_janitor_last_run_removed)",
                            "removed {{sweep}}",
                        ),
                    ),
                ),
                Panel(
                    "Sweep duration and age of the last run",
                    "s",
                    (
                        Query(
                            "max by (sweep) (celery_stack_janitor_last_run_duration_seconds)",
                            "duration {{sweep}}",
                        ),
                        Query(
                            "time() - max by (sweep) "
                            "(celery_stack_janitor_last_run_timestamp_seconds)",
                            "since last {{sweep}}",
                        ),
                    ),
                ),
                Panel(
                    "Locks held and leaked",
                    "short",
                    (
                        # from Redis via every maintenance worker replica: max folds them
                        Query("max(celery_stack_locks_held)", "held"),
                        Query("max(increase(celery_stack_locks_leaked_total[1h]))", "leaked/h"),
                    ),
                ),
                Panel(
                    "Duplicate executions refused/s",
                    "ops",
                    _q(
                        f"sum by (task) (rate(celery_stack_task_duplicates_refused_total[{RATE}]))",
                        "{{task}}",
                    ),
                ),
            ],
        ),
        (
            "Maintenance rules",
            [
                Panel(
                    "Rule lag (oldest eligible row)",
                    "s",
                    _q("max by (rule) (celery_stack_rule_lag_seconds)", "{{rule}}"),
                ),
                Panel(
                    "Rows/s and failures/h per rule",
                    "short",
                    (
                        Query(
                            f"sum by (rule) (rate(celery_stack_rule_rows_total[{RATE}]))",
                            "rows/s {{rule}}",
                        ),
                        Query(
                            "sum by (rule) (increase(celery_stack_rule_failures_total[1h]))",
                            "failures/h {{rule}}",
                        ),
                    ),
                ),
                Panel(
                    "Batches/s and duration p99 per rule",
                    "short",
                    (
                        Query(
                            f"sum by (rule) (rate(celery_stack_rule_batches_total[{RATE}]))",
                            "batches/s {{rule}}",
                        ),
                        Query(
                            "histogram_quantile(0.99, sum by (rule, le) "
                            f"(rate(celery_stack_rule_duration_seconds_bucket[{RATE}])))",
                            "p99 s {{rule}}",
                        ),
                    ),
                ),
            ],
        ),
    ]


Layout = Callable[[], list[tuple[str, list[Panel]]]]
# file stem -> (title, uid, layout)
DASHBOARDS: dict[str, tuple[str, str, Layout]] = {
    "overview": ("celery-stack / Overview", "celery-stack-overview", overview),
    "counters": ("celery-stack / Counters", "celery-stack-counters", counters),
    "scans": ("celery-stack / Scans", "celery-stack-scans", scans),
    "beat-janitor": ("celery-stack / Beat & janitor", "celery-stack-beat-janitor", beat_janitor),
}


def build(stem: str) -> dict[str, object]:
    title, uid, layout = DASHBOARDS[stem]
    board = (
        dashboard.Dashboard(title)
        .uid(uid)
        .tags(TAGS)
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("utc")
        .with_variable(
            dashboard.DatasourceVariable("datasource").label("Data source").type("prometheus")
        )
    )
    panel_id = 1
    for row, panels in layout():
        board.with_row(dashboard.Row(row).id(panel_id))
        panel_id += 1
        for p in panels:
            board.with_panel(p.build(panel_id))
            panel_id += 1
    encoded: dict[str, object] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return encoded


def render(stem: str) -> str:
    return json.dumps(build(stem), indent=2, sort_keys=True) + "\n"


def queries() -> list[tuple[str, str, str]]:
    """(dashboard stem, panel title, expr) of every panel query."""
    return [
        (stem, p.title, q.expr)
        for stem, (_, _, layout) in DASHBOARDS.items()
        for _, panels in layout()
        for p in panels
        for q in p.queries
    ]
