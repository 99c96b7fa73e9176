"""Every Prometheus metric of ours, declared in one place (names `celery_stack_*`).

Celery's generic task metrics come from celery-exporter (task events are on); these are what
only we know. Prefork workers run in multiprocess mode: PROMETHEUS_MULTIPROC_DIR must be set
before this module is imported, and each gauge says how its per-process values combine.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)

NS = "celery_stack"

# --- counters: ingest (api) -------------------------------------------------------------------
INCREMENTS = Counter(
    f"{NS}_counter_increments", "Increments accepted into the Redis buffer.", ["target", "field"]
)
FALLBACKS = Counter(
    f"{NS}_counter_db_fallbacks",
    "Increments written straight to PostgreSQL because Redis was unreachable.",
    ["target", "field"],
)
ACTIONS = Counter(
    f"{NS}_user_actions", "User actions recorded or removed.", ["target", "kind", "op"]
)
DIRTY_MARK_FAILURES = Counter(
    f"{NS}_dirty_mark_failures",
    "Actions whose recount could not be requested (Redis down); reconciliation fixes them.",
    ["target"],
)
# --- counters: flush (worker) -----------------------------------------------------------------
FLUSH_BATCHES = Counter(
    f"{NS}_flush_batches",
    "Flush batches by outcome (applied, already_applied, empty).",
    ["counter", "outcome"],
)
FLUSH_ROWS = Counter(f"{NS}_flush_rows_applied", "Rows updated by flushes.", ["counter"])
FLUSH_DROPPED = Counter(
    f"{NS}_flush_rows_dropped", "Buffered ids whose row no longer exists.", ["counter"]
)
FLUSH_FAILURES = Counter(f"{NS}_flush_failures", "Flush attempts that failed.", ["counter"])
FLUSH_DURATION = Histogram(
    f"{NS}_flush_duration_seconds",
    "Time to flush one shard (claim to ack).",
    ["counter"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
FLUSH_LAG = Gauge(
    f"{NS}_flush_lag_seconds",
    "Age of the oldest increment not yet applied to PostgreSQL, at the last flush.",
    ["counter"],
    multiprocess_mode="max",
)
BUFFERED = Gauge(
    f"{NS}_counter_buffered_entries",
    "Ids with increments buffered in Redis (live + in flight), at the last flush.",
    ["counter"],
    multiprocess_mode="max",
)
RECOUNTS = Counter(f"{NS}_recounts", "Targets recounted from the action tables.", ["target"])
DRIFT = Counter(
    f"{NS}_recount_drift_corrections",
    "Counts that a recount or reconciliation found wrong and corrected.",
    ["target", "source"],
)
TASK_FAILURES = Counter(f"{NS}_task_failures", "Our tasks that raised, by task name.", ["task"])


def multiprocess_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


def registry() -> CollectorRegistry:
    """The registry to expose: a multiprocess collector over all children, or the default."""
    if multiprocess_enabled():
        reg = CollectorRegistry()
        multiprocess.MultiProcessCollector(reg)
        return reg
    from prometheus_client import REGISTRY

    return REGISTRY


def render() -> tuple[bytes, str]:
    return generate_latest(registry()), CONTENT_TYPE_LATEST


def serve(port: int) -> None:
    """Expose /metrics on `port` from this process (workers' and beat's parent process)."""
    if port:
        start_http_server(port, registry=registry())


def mark_process_dead(pid: int) -> None:
    if multiprocess_enabled():
        multiprocess.mark_process_dead(pid)
