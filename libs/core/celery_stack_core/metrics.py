"""Every Prometheus metric of ours, declared in one place, and how each process exposes them.

- `celery_stack_*`: what only we know (flush lag, outbox age, leader epoch, ...).
- `celery_*`: Celery's generic task metrics under celery-exporter's names and labels (`name`,
  `queue_name`, `hostname`), collected in-process from Celery signals (celery_metrics.py): the
  bench (bench/bench_metrics.py) measured that cheaper per task than consuming task events.

Each process exposes only its own families (ROLE_FAMILIES): the API does not show `beat_epoch 0`.
Prefork workers run in multiprocess mode: PROMETHEUS_MULTIPROC_DIR must be set before this
module is imported, and each gauge says how its per-process values combine.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

NS = "celery_stack"
# No `*_created` series: nothing here reads them, and they double every counter's series.
disable_created_metrics()

# --- counters: ingest (api) -----------------------------------------------------------------------
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
VIEWS_UNCHECKED = Counter(
    f"{NS}_views_unchecked",
    "Views accepted without the existence check because PostgreSQL was unreachable.",
    ["target"],
)
VIEW_FAST_PATH = Counter(
    f"{NS}_view_fast_path",
    "Requests answered by the API's fast path instead of FastAPI: a single view (target post or"
    " article) or a views:batch request (target batch).",
    ["target"],
)
COUNT_REREADS = Counter(
    f"{NS}_count_rereads",
    "Count reads repeated because a flush claimed a batch between their Redis and SQL reads.",
    ["target"],
)
DIRTY_MARK_FAILURES = Counter(
    f"{NS}_dirty_mark_failures",
    "Actions whose recount could not be requested (Redis down); reconciliation fixes them.",
    ["target"],
)
# --- counters: flush (worker) ---------------------------------------------------------------------
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

# --- scans ----------------------------------------------------------------------------------------
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
# --- janitor --------------------------------------------------------------------------------------
# Sweeps run in short-lived processes (the CronJob's pod is gone before Prometheus could scrape
# it, the operator has no metrics port), so no janitor metric is counted in-process: every one is
# read at scrape time by the maintenance worker, which is always deployed and scraped.
# The last run of each sweep, wherever it ran (CronJob, CLI, API job): from the janitor_runs
# table (sweeps/runs.py). (name, labels, help)
JANITOR_LAST_RUN_NAME = f"{NS}_janitor_last_run_timestamp_seconds"
JANITOR_RUN_FAMILIES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    (JANITOR_LAST_RUN_NAME, ("sweep",), "Unix time a janitor sweep last finished a real run."),
    (f"{NS}_janitor_last_run_found", ("sweep",), "Things the last real run of a sweep found."),
    (
        f"{NS}_janitor_last_run_removed",
        ("sweep",),
        "Things the last real run of a sweep removed, released, requeued or repaired.",
    ),
    (
        f"{NS}_janitor_last_run_skipped",
        ("sweep", "reason"),
        "Things the last real run of a sweep left alone, by reason.",
    ),
    (
        f"{NS}_janitor_last_run_duration_seconds",
        ("sweep",),
        "Time the last real run of a sweep took.",
    ),
)
# Locks: from Redis, where the locks live (sweeps/locks.py): the locks sweep records what it saw,
# and its release script counts each leaked lock it releases, atomically with the release.
LOCKS_HELD_NAME = f"{NS}_locks_held"
LOCKS_HELD_HELP = (
    "Locks held in Redis after the last real run of the locks sweep (leaked ones released)."
)
LOCKS_LEAKED_NAME = f"{NS}_locks_leaked"  # a counter: exposed as ..._total
LOCKS_LEAKED_HELP = (
    "Locks the janitor released because their owner was gone, by every janitor process."
)
# --- beat (one process per replica; each replica exposes its own) ---------------------------------
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

# --- maintenance rules ----------------------------------------------------------------------------
RULE_ROWS = Counter(f"{NS}_rule_rows", "Rows a maintenance rule changed.", ["rule"])
RULE_BATCHES = Counter(f"{NS}_rule_batches", "Batches (transactions) a rule committed.", ["rule"])
RULE_DURATION = Histogram(
    f"{NS}_rule_duration_seconds",
    "Time of one run of a maintenance rule (all its batches).",
    ["rule"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300),
)
RULE_LAG = Gauge(
    f"{NS}_rule_lag_seconds",
    "Age of the oldest row a rule should already have handled, at the end of its last run.",
    ["rule"],
    multiprocess_mode="mostrecent",
)
RULE_FAILURES = Counter(f"{NS}_rule_failures", "Rule runs that raised.", ["rule"])
TASK_DUPLICATES_REFUSED = Counter(
    f"{NS}_task_duplicates_refused",
    "Executions refused because their task id (beat slot) had already run to completion.",
    ["task"],
)

# --- counters: scrape-time view of the buffer (api) -----------------------------------------------
# Read from Redis when the API is scraped, so the flush-lag alert still fires while no flusher
# runs at all (the flusher's own FLUSH_LAG gauge goes away with it).
PENDING_AGE_NAME = f"{NS}_counter_pending_age_seconds"
PENDING_AGE_HELP = (
    "Age of the oldest increment buffered in Redis and not yet applied (live or in flight), "
    "read from Redis at scrape time."
)

# --- HTTP (api) -----------------------------------------------------------------------------------
HTTP_REQUESTS = Counter(
    f"{NS}_http_requests",
    "HTTP requests answered, by route template, method and status class (2xx, 4xx, 5xx).",
    ["route", "method", "code"],
)
HTTP_DURATION = Histogram(
    f"{NS}_http_request_duration_seconds",
    "Time to answer an HTTP request, by route template.",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)

# --- Celery generic (celery-exporter's names and labels) ------------------------------------------
# Labels are bounded: `name` is a task registered on the app (else "other"), `queue_name` a
# configured queue (else "other"), `hostname` the worker's node name (one per replica).
# Histograms carry no hostname: buckets x replicas is where cardinality explodes.
_TASK = ["name", "queue_name", "hostname"]
TASK_SENT = Counter("celery_task_sent", "Tasks published by this process.", _TASK)
TASK_RECEIVED = Counter("celery_task_received", "Tasks a worker took off its queue.", _TASK)
TASK_STARTED = Counter("celery_task_started", "Tasks a worker process started running.", _TASK)
TASK_SUCCEEDED = Counter("celery_task_succeeded", "Tasks that returned normally.", _TASK)
TASK_FAILED = Counter(
    "celery_task_failed", "Tasks that raised, by exception class.", [*_TASK, "exception"]
)
TASK_RETRIED = Counter("celery_task_retried", "Tasks that asked to be retried.", _TASK)
TASK_REJECTED = Counter(
    "celery_task_rejected", "Messages a worker rejected (unknown task, bad payload).", _TASK
)
TASK_REVOKED = Counter("celery_task_revoked", "Tasks revoked or expired before they ran.", _TASK)
TASK_RUNTIME = Histogram(
    "celery_task_runtime",
    "Seconds a task ran in the worker process (prerun to postrun).",
    ["name", "queue_name"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
)
TASK_QUEUE_WAIT = Histogram(
    "celery_task_queue_wait",
    "Seconds from a task's publish to a worker process starting it (queue wait + prefetch).",
    ["name", "queue_name"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
)
TASKS_ACTIVE = Gauge(
    "celery_worker_tasks_active",
    "Tasks running in this worker's processes now.",
    ["hostname", "queue_name"],
    multiprocess_mode="livesum",
)
# Read at scrape time from the broker and the worker's heartbeat (celery_metrics.py).
QUEUE_LENGTH_NAME = "celery_queue_length"
UNACKED_NAME = f"{NS}_queue_unacked_messages"
WORKER_UP_NAME = "celery_worker_up"
WORKER_CONSUMING_NAME = f"{NS}_worker_consuming"

# --- which process exposes what -------------------------------------------------------------------
# A family is exposed by a process whose role lists a prefix of its name. Prefixes, not a list of
# objects, so a family added later under an owned prefix is exposed without touching this table.
_PROCESS = ("process_", "python_")
_CELERY_PUBLISH = ("celery_task_sent",)
_CELERY_WORKER = (
    "celery_task_",
    "celery_worker_",
    QUEUE_LENGTH_NAME,
    UNACKED_NAME,
    WORKER_CONSUMING_NAME,
    f"{NS}_task_failures",
    f"{NS}_task_duplicates_refused",
)
# Read at scrape time by the maintenance worker (sweeps/runs.py, sweeps/locks.py); the janitor's
# own processes (CronJob, CLI, operator) live too briefly or have no metrics port.
_JANITOR = (f"{NS}_janitor_", f"{NS}_locks_")
ROLE_FAMILIES: dict[str, tuple[str, ...]] = {
    "api": (
        *_PROCESS,
        *_CELERY_PUBLISH,
        f"{NS}_http_",
        f"{NS}_counter_increments",
        f"{NS}_counter_db_fallbacks",
        f"{NS}_views_unchecked",
        f"{NS}_view_fast_path",
        f"{NS}_count_rereads",
        PENDING_AGE_NAME,
        f"{NS}_user_actions",
        f"{NS}_dirty_mark_failures",
        f"{NS}_scans_created",
        f"{NS}_scans_finished",
        f"{NS}_outbox_sent",
        f"{NS}_outbox_publish_failures",
    ),
    "worker-counters": (
        *_PROCESS,
        *_CELERY_WORKER,
        f"{NS}_flush_",
        f"{NS}_counter_buffered_entries",
        f"{NS}_recount",
    ),
    "worker-scans": (
        *_PROCESS,
        *_CELERY_WORKER,
        f"{NS}_scans_finished",
        f"{NS}_scans_dead",
        f"{NS}_scan_",
        f"{NS}_scanner_",
    ),
    "worker-maintenance": (
        *_PROCESS,
        *_CELERY_WORKER,
        *_JANITOR,
        f"{NS}_outbox_",
        f"{NS}_scans_by_status",
        f"{NS}_rule_",
    ),
    "beat": (*_PROCESS, *_CELERY_PUBLISH, f"{NS}_beat_"),
}


def role_of_worker(queue: str) -> str:
    return f"worker-{queue}"


def prefixes_of(role: str) -> tuple[str, ...]:
    """A role's family prefixes; a worker of a queue added through values only (not listed
    here) gets the generic Celery families."""
    if role in ROLE_FAMILIES:
        return ROLE_FAMILIES[role]
    if role.startswith("worker-"):
        return (*_PROCESS, *_CELERY_WORKER)
    raise KeyError(f"no metrics role {role!r}: one of {sorted(ROLE_FAMILIES)} or worker-<queue>")


def multiprocess_enabled() -> bool:
    return bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class RoleCollector(Collector):
    """The families of one role, from this process (or from every prefork child's files), plus
    the role's scrape-time collectors."""

    def __init__(self, role: str, extra: Iterable[Collector] = ()) -> None:
        self.prefixes = prefixes_of(role)
        self.extra = list(extra)
        self.source: Any = REGISTRY
        if multiprocess_enabled():
            self.source = CollectorRegistry()
            multiprocess.MultiProcessCollector(self.source)

    def collect(self) -> Iterator[Metric]:
        for family in self.source.collect():
            if family.name.startswith(self.prefixes):
                yield family
        for collector in self.extra:
            yield from collector.collect()


def registry(role: str, extra: Iterable[Collector] = ()) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(RoleCollector(role, extra))
    return reg


def render(reg: CollectorRegistry) -> tuple[bytes, str]:
    return generate_latest(reg), CONTENT_TYPE_LATEST


Check = Callable[[], tuple[bool, dict[str, Any]]]


class _Handler(BaseHTTPRequestHandler):
    registry: CollectorRegistry
    checks: dict[str, Check]

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            body, ctype = render(self.registry)
            self._reply(200, body, ctype)
        elif path in self.checks:
            ok, detail = self.checks[path]()
            body = json.dumps({"ok": ok, **detail}).encode()
            self._reply(200 if ok else 503, body, "application/json")
        else:
            self._reply(404, b'{"error": "not found"}', "application/json")

    def _reply(self, code: int, body: bytes, ctype: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return None


def serve(
    port: int, reg: CollectorRegistry, checks: dict[str, Check]
) -> ThreadingHTTPServer | None:
    """Serve /metrics and the given checks (`/healthz`, `/readyz`) on `port` from a daemon
    thread; any other path is 404. None when port is 0."""
    if not port:
        return None
    handler = type("Handler", (_Handler,), {"registry": reg, "checks": dict(checks)})
    server = ThreadingHTTPServer(("0.0.0.0", port), handler)  # noqa: S104 - scrapes and probes
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


def mark_process_dead(pid: int) -> None:
    if multiprocess_enabled():
        multiprocess.mark_process_dead(pid)
