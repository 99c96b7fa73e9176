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

# --- scans ---------------------------------------------------------------------------------------
SCANS_CREATED = Counter(f"{NS}_scans_created", "Scans created through the API.")
SCANS_FINISHED = Counter(
    f"{NS}_scans_finished",
    "Scans that reached a terminal state, by status (succeeded, failed, cancelled, dead).",
    ["status"],
)
SCANS_BY_STATUS = Gauge(
    f"{NS}_scans_by_status",
    "Scans queued or running, at the last outbox relay run (finished ones: scans_finished).",
    ["status"],
    multiprocess_mode="max",
)
SCAN_DISPATCH_LATENCY = Histogram(
    f"{NS}_scan_dispatch_latency_seconds",
    "Time from a scan attempt being queued (its COMMIT) to a worker starting it.",
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
SCAN_DURATION = Histogram(
    f"{NS}_scan_duration_seconds",
    "Time a worker spent on one scan delivery.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
SCAN_REDELIVERIES = Counter(
    f"{NS}_scan_redeliveries", "Scan messages started again for an attempt already started."
)
SCANS_DEAD = Counter(f"{NS}_scans_dead", "Scans sent to `dead` after the redelivery cap.")
SCAN_NOOPS = Counter(
    f"{NS}_scan_noops",
    "Scan messages that did nothing, by reason (row_gone, stale_attempt, finished, taken).",
    ["reason"],
)
SCANNER_FETCH_ERRORS = Counter(
    f"{NS}_scanner_fetch_errors",
    "Scanner fetches that failed, by class (dns, blocked, connect, timeout, tls, too_large, "
    "redirects, protocol).",
    ["error"],
)
SCANNER_BLOCKED = Counter(
    f"{NS}_scanner_ssrf_blocked",
    "Addresses the SSRF guard refused, by class (loopback, private, link_local, ...).",
    ["reason"],
)
OUTBOX_SENT = Counter(f"{NS}_outbox_sent", "Outbox rows published, by sender (api, relay).", ["by"])
OUTBOX_PUBLISH_FAILURES = Counter(
    f"{NS}_outbox_publish_failures", "Outbox publishes that failed, by sender.", ["by"]
)
OUTBOX_BACKLOG = Gauge(
    f"{NS}_outbox_backlog", "Unsent outbox rows, at the last relay run.", multiprocess_mode="max"
)
OUTBOX_OLDEST_AGE = Gauge(
    f"{NS}_outbox_oldest_unsent_age_seconds",
    "Age of the oldest unsent outbox row, at the last relay run.",
    multiprocess_mode="max",
)

# --- janitor (begin) -------------------------------------------------------------------------
JANITOR_FOUND = Counter(
    f"{NS}_janitor_found", "Things a janitor sweep found to act on (real runs).", ["sweep"]
)
JANITOR_REMOVED = Counter(
    f"{NS}_janitor_removed",
    "Things a janitor sweep removed, released, requeued or repaired (real runs).",
    ["sweep"],
)
JANITOR_SKIPPED = Counter(
    f"{NS}_janitor_skipped",
    "Things a janitor sweep looked at and left alone, by reason (owner_alive, grace, changed...).",
    ["sweep", "reason"],
)
JANITOR_DURATION = Histogram(
    f"{NS}_janitor_sweep_duration_seconds",
    "Time one janitor sweep took (real runs).",
    ["sweep"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
JANITOR_LAST_RUN = Gauge(
    f"{NS}_janitor_last_run_timestamp_seconds",
    "Unix time a janitor sweep last finished a real run.",
    ["sweep"],
    multiprocess_mode="max",
)
LOCKS_HELD = Gauge(
    f"{NS}_locks_held", "Locks held in Redis at the last janitor look.", multiprocess_mode="max"
)
LOCKS_LEAKED = Counter(
    f"{NS}_locks_leaked", "Locks the janitor released because their owner was gone."
)
# --- janitor (end) ---------------------------------------------------------------------------

# --- beat (one process per replica; each replica exposes its own) ------------------------------
BEAT_IS_LEADER = Gauge(
    f"{NS}_beat_is_leader", "1 while this beat replica leads and may send, else 0.", ["election"]
)
BEAT_EPOCH = Gauge(
    f"{NS}_beat_epoch", "Fencing epoch this replica leads with, or the last one it observed."
)
BEAT_TRANSITIONS = Counter(
    f"{NS}_beat_transitions",
    "Leadership transitions of this replica (acquired, released, lost, refused).",
    ["event"],
)
BEAT_RENEWAL_AGE = Gauge(
    f"{NS}_beat_last_renewal_age_seconds",
    "Seconds since this leader's last successful lease renewal (0 on a standby).",
)
BEAT_SLOTS = Counter(
    f"{NS}_beat_slots",
    "Schedule slots by outcome: claimed, sent, resent (claimed earlier, left unsent), "
    "skipped_duplicate, missed, send_failed, fenced.",
    ["entry", "outcome"],
)
BEAT_TICK_LAG = Gauge(
    f"{NS}_beat_tick_lag_seconds", "How late the leader's last tick started after it was due."
)
BEAT_SEND_LATENESS = Histogram(
    f"{NS}_beat_send_lateness_seconds",
    "Time from a slot's nominal due time to its send.",
    ["entry"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 60, 300),
)
BEAT_LAST_TICK = Gauge(
    f"{NS}_beat_last_tick_timestamp_seconds", "Unix time of the leader's last completed tick."
)


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
