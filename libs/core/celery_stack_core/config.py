"""Settings from the environment, one variable per knob (docs/configuration.md lists them all).

Settings are grouped (`settings.counters.shards`, `settings.beat.tick`, ...); every field keeps
its environment variable as its alias (`COUNTER_SHARDS`), so deployments do not change. Tests
build `Settings(COUNTER_SHARDS=4, ...)` with the variable names and `settings.replace(...)`.
Per-queue settings (`<QUEUE>_TIME_LIMIT`, ...) come from the queue registry (queues.py).

Defaults run locally against `make run`'s servers; production sets URLs through Secrets.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from celery_stack_core import queues as registry
from celery_stack_core.queues import QUEUES, QueueSpec

# Development tokens, accepted only when ENVIRONMENT=local or test (see Settings._check_tokens).
DEV_USER_TOKEN = "dev-user-token"  # noqa: S105 - documented local-only credential
DEV_ADMIN_TOKEN = "dev-admin-token"  # noqa: S105


def hash_token(token: str) -> str:
    """Tokens are configured and compared as SHA-256 hex digests, never stored in clear."""
    return hashlib.sha256(token.encode()).hexdigest()


class TokenSpec(BaseModel):
    """One API credential: who it is, the digest of its secret, and what it may do."""

    name: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: list[Literal["user", "admin"]]


def _dev_tokens() -> list[TokenSpec]:
    return [
        TokenSpec(name="dev-user", sha256=hash_token(DEV_USER_TOKEN), scopes=["user"]),
        TokenSpec(name="dev-admin", sha256=hash_token(DEV_ADMIN_TOKEN), scopes=["user", "admin"]),
    ]


def _json_or_empty(value: object, empty: object) -> object:
    if isinstance(value, str):
        return json.loads(value) if value.strip() else empty
    return value


class _Group(BaseSettings):
    """A group of settings; each field's `validation_alias` is its environment variable."""

    model_config = SettingsConfigDict(env_ignore_empty=True, extra="ignore", populate_by_name=True)


class DeploySettings(_Group):
    """deployment"""

    # local and test accept the development tokens; production refuses them and requires
    # API_TOKENS.
    environment: Literal["local", "test", "production"] = Field(
        default="local", validation_alias="ENVIRONMENT"
    )
    # Reported to PostgreSQL as application_name.
    service_name: str = Field(default="celery-stack", validation_alias="SERVICE_NAME")
    # Python log level of every service (logs are JSON lines on stdout).
    log_level: str = Field(default="INFO", validation_alias="LOG_LEVEL")
    # Identity of this process for lock owner records and beat's Lease holder: pod name and
    # UID via the Downward API on Kubernetes; host+pid+boot id locally when empty.
    pod_name: str = Field(default="", validation_alias="POD_NAME")
    pod_uid: str = Field(default="", validation_alias="POD_UID")


class StoreSettings(_Group):
    """stores"""

    # PostgreSQL, SQLAlchemy URL with the asyncpg driver. A Secret in production.
    database_url: str = Field(
        default="postgresql+asyncpg://postgres@127.0.0.1:5432/celery_stack",
        validation_alias="DATABASE_URL",
    )
    # Connections per process in the SQLAlchemy pool (plus 2 overflow).
    database_pool_size: int = Field(default=5, ge=1, le=100, validation_alias="DATABASE_POOL_SIZE")
    # Redis for counters, leases and beat; needs AOF (docs/loss-bounds.md).
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", validation_alias="REDIS_URL")


class CelerySettings(_Group):
    """celery"""

    # The broker and result backend default to REDIS_URL; split them in production if you like.
    broker_url: str = Field(default="", validation_alias="CELERY_BROKER_URL")
    result_backend: str = Field(default="", validation_alias="CELERY_RESULT_BACKEND")
    # Seconds a result key lives; every result gets a TTL (field report 002).
    result_expires: int = Field(default=3600, ge=60, validation_alias="CELERY_RESULT_EXPIRES")
    # An unacked message returns to the queue after this long: must exceed every hard limit.
    visibility_timeout: int = Field(
        default=3600, ge=10, validation_alias="CELERY_VISIBILITY_TIMEOUT"
    )
    # Seconds a worker keeps running tasks after SIGTERM before requeueing them (Celery 5.5).
    soft_shutdown_timeout: float = Field(
        default=20.0, ge=0, validation_alias="CELERY_SOFT_SHUTDOWN_TIMEOUT"
    )
    # Send Celery's task events (sent, received, started, succeeded) to the broker, for Flower
    # or an event-based exporter; our task metrics come from signals and need none (the chart
    # turns this on with flower.enabled; bench/bench_metrics.py measures what they cost).
    task_events: bool = Field(default=False, validation_alias="CELERY_TASK_EVENTS")


class QueueSettings(BaseModel):
    """per queue (one set per entry of the queue registry, queues.py)"""

    model_config = ConfigDict(extra="forbid")

    # Soft time limit in seconds: the task gets SoftTimeLimitExceeded.
    soft_time_limit: int = Field(ge=1)
    # Hard time limit in seconds: the task's process is killed.
    time_limit: int = Field(ge=1)
    # Messages reserved per worker process (--prefetch-multiplier); 1 with acks_late.
    prefetch: int = Field(ge=1)
    # Queues the worker consumes (-Q, comma-separated); empty means the queue itself.
    queues: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("queues", mode="before")
    @classmethod
    def _parse_queues(cls, value: object) -> object:
        if isinstance(value, str):
            return [q.strip() for q in value.split(",") if q.strip()]
        return value

    @classmethod
    def env_names(cls, spec: QueueSpec) -> dict[str, str]:
        """Environment variable -> field, e.g. COUNTERS_TIME_LIMIT -> time_limit."""
        return {spec.env_prefix + field.upper(): field for field in cls.model_fields}

    @classmethod
    def for_queue(cls, spec: QueueSpec, overrides: dict[str, Any]) -> QueueSettings:
        """The registry's defaults, then the environment, then explicit overrides."""
        values: dict[str, Any] = {
            "soft_time_limit": spec.soft_time_limit,
            "time_limit": spec.time_limit,
            "prefetch": spec.prefetch,
        }
        for env, field in cls.env_names(spec).items():
            if os.environ.get(env):
                values[field] = os.environ[env]
        return cls(**{**values, **overrides})


class CounterSettings(_Group):
    """counters"""

    # Pending hashes per entity/field; an id always lands in the same shard.
    shards: int = Field(default=8, ge=1, le=1024, validation_alias="COUNTER_SHARDS")
    # Seconds between flushes of the view buffers (beat sends counters.flush).
    flush_interval: float = Field(default=2.0, gt=0, validation_alias="COUNTER_FLUSH_INTERVAL")
    # Seconds between drains of the dirty set (beat sends counters.recount).
    recount_interval: float = Field(default=2.0, gt=0, validation_alias="RECOUNT_INTERVAL")
    # Targets recounted per statement.
    recount_batch_size: int = Field(
        default=500, ge=1, le=10_000, validation_alias="RECOUNT_BATCH_SIZE"
    )
    # A dirty target claimed by a drainer that died is retried after this many seconds.
    recount_claim_timeout: float = Field(
        default=60.0, gt=0, validation_alias="RECOUNT_CLAIM_TIMEOUT"
    )
    # Full reconciliation: seconds between runs and rows per statement.
    reconcile_interval: float = Field(default=3600.0, gt=0, validation_alias="RECONCILE_INTERVAL")
    reconcile_batch_size: int = Field(default=2000, ge=1, validation_alias="RECONCILE_BATCH_SIZE")
    # Lease held per shard while flushing; renewed every third of it while the holder works.
    flush_lease_ttl: float = Field(default=30.0, gt=0, validation_alias="FLUSH_LEASE_TTL")
    # Existence cache for view ingest (entries, seconds): ids known to exist skip the database
    # on the hot path.
    view_id_cache_size: int = Field(default=100_000, ge=0, validation_alias="VIEW_ID_CACHE_SIZE")
    view_id_cache_ttl: float = Field(default=300.0, ge=0, validation_alias="VIEW_ID_CACHE_TTL")


class ApiSettings(_Group):
    """api"""

    # JSON list of {"name", "sha256", "scopes"}; `celery-stack-api hash-token` makes a digest.
    tokens: Annotated[list[TokenSpec], NoDecode] = Field(
        default_factory=list, validation_alias="API_TOKENS"
    )
    # Larger request bodies are refused with 413 before they are read.
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, validation_alias="API_MAX_BODY_BYTES")
    # The same for POST /api/v1/views:batch, whose 10,000 items take up to about 600 KB.
    batch_max_body_bytes: int = Field(
        default=1024 * 1024, ge=1024, validation_alias="API_BATCH_MAX_BODY_BYTES"
    )

    @field_validator("tokens", mode="before")
    @classmethod
    def _parse_tokens(cls, value: object) -> object:
        return _json_or_empty(value, [])


class ObservabilitySettings(_Group):
    """observability"""

    # Port for /metrics of workers and beat (the API serves /metrics itself).
    metrics_port: int = Field(default=9808, ge=0, le=65535, validation_alias="METRICS_PORT")
    # Directory for prometheus-client multiprocess files (prefork workers); empty = single process.
    prometheus_multiproc_dir: str = Field(default="", validation_alias="PROMETHEUS_MULTIPROC_DIR")
    # OTLP/HTTP endpoint; traces go nowhere when empty.
    otlp_endpoint: str = Field(default="", validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT")
    # File a worker touches while it consumes; the liveness probe checks its age.
    worker_heartbeat_file: str = Field(
        default="/tmp/celery-stack-worker-alive",  # noqa: S108
        validation_alias="WORKER_HEARTBEAT_FILE",
    )
    # Seconds between touches of WORKER_HEARTBEAT_FILE.
    worker_heartbeat_interval: float = Field(
        default=5.0, gt=0, validation_alias="WORKER_HEARTBEAT_INTERVAL"
    )


class BeatSettings(_Group):
    """beat"""

    # Seconds between schedule checks of the leader.
    tick: float = Field(default=0.5, gt=0, validation_alias="BEAT_TICK")
    # Leader election backend: a Kubernetes Lease when in-cluster config exists ("auto"), else
    # a Redis lease with an epoch counter; "redis" or "kubernetes" forces one.
    election: Literal["auto", "redis", "kubernetes"] = Field(
        default="auto", validation_alias="BEAT_ELECTION"
    )
    # Lease timing (client-go's defaults): the lease lasts BEAT_LEASE_DURATION after the last
    # renewal; the leader gives up (and stops sending) when it could not renew for
    # BEAT_RENEW_DEADLINE; renewals and standby attempts happen every BEAT_RETRY_PERIOD.
    lease_duration: float = Field(default=15.0, gt=0, validation_alias="BEAT_LEASE_DURATION")
    renew_deadline: float = Field(default=10.0, gt=0, validation_alias="BEAT_RENEW_DEADLINE")
    retry_period: float = Field(default=2.0, gt=0, validation_alias="BEAT_RETRY_PERIOD")
    # Kubernetes Lease object; the namespace defaults to the pod's own (service account).
    lease_name: str = Field(default="celery-stack-beat", validation_alias="BEAT_LEASE_NAME")
    lease_namespace: str = Field(default="", validation_alias="BEAT_LEASE_NAMESPACE")
    # Claimed slot keys live this long (at least three intervals of their entry).
    slot_ttl: float = Field(default=3600.0, gt=0, validation_alias="BEAT_SLOT_TTL")
    # Catch-up "all" sends at most this many missed slots per entry; older ones count as missed.
    catchup_max: int = Field(default=100, ge=1, validation_alias="BEAT_CATCHUP_MAX")
    # Catch-up "skip" still sends a slot this many seconds late (a normal tick or a fast
    # handover); later slots are dropped and counted as missed.
    skip_grace: float = Field(default=5.0, ge=0, validation_alias="BEAT_SKIP_GRACE")
    # Liveness: touched by the leader after every tick, by a standby after every attempt;
    # `celery-stack-beat alive` fails when it is older than BEAT_ALIVE_MAX_AGE.
    heartbeat_file: str = Field(
        default="/tmp/celery-stack-beat-alive",  # noqa: S108
        validation_alias="BEAT_HEARTBEAT_FILE",
    )
    alive_max_age: float = Field(default=30.0, gt=0, validation_alias="BEAT_ALIVE_MAX_AGE")

    @model_validator(mode="after")
    def _check_timing(self) -> BeatSettings:
        # A leader must stop sending (renew deadline) before its lease can expire and a standby
        # take over; renewals must be attempted several times within the deadline.
        if not self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "beat timing needs BEAT_RETRY_PERIOD < BEAT_RENEW_DEADLINE < BEAT_LEASE_DURATION"
            )
        if self.tick >= self.renew_deadline:
            raise ValueError("BEAT_TICK must be below BEAT_RENEW_DEADLINE")
        return self


class ScanSettings(_Group):
    """scans"""

    # Seconds between heartbeats a running scan writes to its row.
    heartbeat_interval: float = Field(default=2.0, gt=0, validation_alias="SCAN_HEARTBEAT_INTERVAL")
    # A running scan whose heartbeat is older than this belongs to a dead worker: a redelivered
    # message may take it over (at once when that worker is known dead on the same host/pod).
    heartbeat_stale: float = Field(default=15.0, gt=0, validation_alias="SCAN_HEARTBEAT_STALE")
    # Deliveries of one attempt before the scan goes to `dead` (a handler that kills its worker).
    max_deliveries: int = Field(default=3, ge=1, le=100, validation_alias="SCAN_MAX_DELIVERIES")

    @model_validator(mode="after")
    def _check_heartbeat(self) -> ScanSettings:
        if self.heartbeat_stale <= 2 * self.heartbeat_interval:
            # One late heartbeat must not hand a live scan to a second worker.
            raise ValueError("SCAN_HEARTBEAT_STALE must exceed twice SCAN_HEARTBEAT_INTERVAL")
        return self


class ScannerSettings(_Group):
    """scanner"""

    # Hostname -> addresses used instead of DNS (like curl --resolve): tests and the local demo.
    # JSON object, e.g. {"demo.localtest": ["127.0.0.1"]}. The SSRF guard still applies.
    resolve: Annotated[dict[str, list[str]], NoDecode] = Field(
        default_factory=dict, validation_alias="SCANNER_RESOLVE"
    )
    # Networks the SSRF guard lets through although they are not public (comma-separated CIDRs,
    # e.g. "127.0.0.1/32"). Empty in production. Cloud-metadata addresses are never allowed.
    allow_private_cidrs: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="SCANNER_ALLOW_PRIVATE_CIDRS"
    )
    # Extra CA bundle (PEM file) the scanner trusts besides the system store: tests, demo.
    ca_bundle: str = Field(default="", validation_alias="SCANNER_CA_BUNDLE")
    # Most same-origin pages one scan fetches (a scan's config may ask for fewer).
    max_pages: int = Field(default=10, ge=1, le=200, validation_alias="SCANNER_MAX_PAGES")
    # Redirects followed per fetch; every hop is resolved and checked by the SSRF guard.
    max_redirects: int = Field(default=5, ge=0, le=20, validation_alias="SCANNER_MAX_REDIRECTS")
    # Seconds per fetch (connect, read, TLS handshake).
    timeout: float = Field(default=10.0, gt=0, validation_alias="SCANNER_TIMEOUT")
    # Bytes read per page at most; the rest of a larger body is not downloaded.
    max_bytes: int = Field(default=1_000_000, ge=1024, validation_alias="SCANNER_MAX_BYTES")
    # User-Agent header of the scanner's requests.
    user_agent: str = Field(
        default="celery-stack-scanner/0.1", validation_alias="SCANNER_USER_AGENT"
    )
    # TLS certificates closer than this to expiry are reported.
    cert_warn_days: int = Field(default=30, ge=0, validation_alias="SCANNER_CERT_WARN_DAYS")

    @field_validator("resolve", mode="before")
    @classmethod
    def _parse_resolve(cls, value: object) -> object:
        return _json_or_empty(value, {})

    @field_validator("allow_private_cidrs", mode="before")
    @classmethod
    def _parse_cidrs(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [c.strip() for c in text.split(",") if c.strip()]
        return value


class OutboxSettings(_Group):
    """outbox"""

    # Seconds between runs of the outbox relay (beat entry `outbox-relay`, maintenance queue).
    relay_interval: float = Field(default=2.0, gt=0, validation_alias="OUTBOX_RELAY_INTERVAL")
    # Outbox rows younger than this are left to the API that wrote them (it publishes right
    # after COMMIT); older unsent rows are what a crash or a broker outage left: the relay's.
    # Kept above the broker publish socket timeout (5 s, celery_app.py) so a slow publish by
    # the API is not sent a second time by the relay.
    relay_min_age: float = Field(default=10.0, ge=0, validation_alias="OUTBOX_RELAY_MIN_AGE")
    # Rows the relay locks (FOR UPDATE SKIP LOCKED) and sends per batch.
    relay_batch: int = Field(default=500, ge=1, le=10_000, validation_alias="OUTBOX_RELAY_BATCH")


class JanitorSettings(_Group):
    """janitor"""

    # Keys asked for per SCAN step (its COUNT hint), and the most keys any one Redis command of a
    # sweep handles: at 250 a step (SCAN + each key's expiry, in Lua) takes well under 1 ms.
    scan_count: int = Field(default=250, ge=10, le=100_000, validation_alias="JANITOR_SCAN_COUNT")
    # Keys one sweep examines per run at most; the next run goes on from the saved cursor.
    max_keys: int = Field(default=2_000_000, ge=100, validation_alias="JANITOR_MAX_KEYS")
    # Rows per retention transaction, and transactions per sweep per run at most.
    batch_size: int = Field(default=1000, ge=1, le=100_000, validation_alias="JANITOR_BATCH_SIZE")
    max_batches: int = Field(default=100, ge=1, validation_alias="JANITOR_MAX_BATCHES")
    # A lock's owner must have been silent (no heartbeat) this many seconds before its lock is
    # released, and on Kubernetes its pod must be gone as well (DESIGN "Locks and the janitor").
    lock_grace: float = Field(default=30.0, ge=0, validation_alias="JANITOR_LOCK_GRACE")
    # A running scan is stuck when its heartbeat is older than SCAN_HEARTBEAT_STALE plus this
    # and its worker is not alive; it is then requeued as a new attempt or marked dead.
    stuck_scan_grace: float = Field(default=60.0, ge=0, validation_alias="JANITOR_STUCK_SCAN_GRACE")
    # An in-flight counter batch older than this with no flush lease held gets a flush sent to
    # the counters queue, which resumes it (the flush's own claim returns the in-flight batch).
    inflight_max_age: float = Field(
        default=120.0, gt=0, validation_alias="JANITOR_INFLIGHT_MAX_AGE"
    )
    # Dirty-set claims older than RECOUNT_CLAIM_TIMEOUT plus this go back to the dirty set.
    claim_grace: float = Field(default=60.0, ge=0, validation_alias="JANITOR_CLAIM_GRACE")
    # Unsent outbox rows older than this are published by the janitor (the relay missed them).
    outbox_max_age: float = Field(default=300.0, gt=0, validation_alias="JANITOR_OUTBOX_MAX_AGE")
    # Retention in days: findings of finished scans, sent outbox rows, dead scans, and counter
    # ledger rows (only those whose batch can no longer be resumed, docs/counters.md).
    retention_findings_days: float = Field(
        default=90.0, gt=0, validation_alias="RETENTION_FINDINGS_DAYS"
    )
    retention_outbox_days: float = Field(
        default=7.0, gt=0, validation_alias="RETENTION_OUTBOX_DAYS"
    )
    retention_dead_scans_days: float = Field(
        default=30.0, gt=0, validation_alias="RETENTION_DEAD_SCANS_DAYS"
    )
    retention_ledger_days: float = Field(
        default=7.0, gt=0, validation_alias="RETENTION_LEDGER_DAYS"
    )
    # Seconds a dry run through the API may take; it reports `complete: false` when cut short.
    dry_run_timeout: float = Field(default=10.0, gt=0, validation_alias="JANITOR_DRY_RUN_TIMEOUT")
    # Kubernetes namespace whose pods own locks and scans (the janitor's own when empty and
    # in-cluster); outside Kubernetes pod owners are never released by a sweep.
    namespace: str = Field(default="", validation_alias="JANITOR_NAMESPACE")
    # The operator: the Job template file its CronJobs copy (rendered by the chart), the port of
    # kopf's liveness endpoint, and the label selector of the pods whose deletion releases locks.
    operator_job_template: str = Field(default="", validation_alias="JANITOR_OPERATOR_JOB_TEMPLATE")
    operator_health_port: int = Field(
        default=8080, ge=0, le=65535, validation_alias="JANITOR_OPERATOR_HEALTH_PORT"
    )
    # Seconds between the operator's status updates of each JanitorPolicy (last schedule, run).
    operator_status_interval: float = Field(
        default=30.0, gt=0, validation_alias="JANITOR_OPERATOR_STATUS_INTERVAL"
    )
    # Set by the operator on each JanitorPolicy's CronJob: the sweep keeps its last report in
    # Redis under this policy's name, and the operator copies it into the policy's status.
    policy: str = Field(default="", validation_alias="JANITOR_POLICY")
    operator_pod_selector: str = Field(
        default="app.kubernetes.io/name=celery-stack",
        validation_alias="JANITOR_OPERATOR_POD_SELECTOR",
    )


class MaintenanceSettings(_Group):
    """maintenance rules"""

    # Run the shipped rule set (report 003's eleven jobs over the example tables of migration
    # 0004); docs/maintenance-rules.md. Off: only MAINTENANCE_RULES run.
    default_rules: bool = Field(default=True, validation_alias="MAINTENANCE_DEFAULT_RULES")
    # JSON object: default rule name -> fields to change, e.g.
    # {"check-expired-coupons": {"every": 60, "batch_size": 2000}}.
    rule_overrides: Annotated[dict[str, dict[str, Any]], NoDecode] = Field(
        default_factory=dict, validation_alias="MAINTENANCE_RULE_OVERRIDES"
    )
    # JSON list of the operator's own rules (same format as the defaults), validated at startup
    # against the live schema; a name used twice is refused.
    rules: Annotated[list[dict[str, Any]], NoDecode] = Field(
        default_factory=list, validation_alias="MAINTENANCE_RULES"
    )

    @field_validator("rule_overrides", mode="before")
    @classmethod
    def _parse_overrides(cls, value: object) -> object:
        return _json_or_empty(value, {})

    @field_validator("rules", mode="before")
    @classmethod
    def _parse_rules(cls, value: object) -> object:
        return _json_or_empty(value, [])


def env_name(group: type[BaseModel], field: str) -> str:
    alias = group.model_fields[field].validation_alias
    assert isinstance(alias, str), f"{group.__name__}.{field} needs its env name as alias"
    return alias


class Settings(BaseModel):
    """All settings, by group. `Settings()` reads the environment; keyword arguments named like
    the variables (`Settings(COUNTER_SHARDS=4)`) override it, as do whole groups."""

    model_config = ConfigDict(extra="forbid")

    deploy: DeploySettings = Field(default_factory=DeploySettings)
    stores: StoreSettings = Field(default_factory=StoreSettings)
    celery: CelerySettings = Field(default_factory=CelerySettings)
    queues: dict[str, QueueSettings] = Field(default_factory=dict)
    counters: CounterSettings = Field(default_factory=CounterSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    observability: ObservabilitySettings = Field(default_factory=ObservabilitySettings)
    beat: BeatSettings = Field(default_factory=BeatSettings)
    scans: ScanSettings = Field(default_factory=ScanSettings)
    scanner: ScannerSettings = Field(default_factory=ScannerSettings)
    outbox: OutboxSettings = Field(default_factory=OutboxSettings)
    janitor: JanitorSettings = Field(default_factory=JanitorSettings)
    maintenance: MaintenanceSettings = Field(default_factory=MaintenanceSettings)

    GROUPS: ClassVar[dict[str, type[_Group]]] = {
        "deploy": DeploySettings,
        "stores": StoreSettings,
        "celery": CelerySettings,
        "counters": CounterSettings,
        "api": ApiSettings,
        "observability": ObservabilitySettings,
        "beat": BeatSettings,
        "scans": ScanSettings,
        "scanner": ScannerSettings,
        "outbox": OutboxSettings,
        "janitor": JanitorSettings,
        "maintenance": MaintenanceSettings,
    }

    @staticmethod
    def env_names() -> dict[str, tuple[str, str]]:
        """Every environment variable -> (group, field); queue variables as ("queues", ...)."""
        out = {
            env_name(cls, field): (group, field)
            for group, cls in Settings.GROUPS.items()
            for field in cls.model_fields
        }
        for spec in QUEUES.values():
            for env, field in QueueSettings.env_names(spec).items():
                out[env] = (f"queues.{spec.name}", field)
        return out

    @model_validator(mode="before")
    @classmethod
    def _from_variables(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        names = cls.env_names()
        given: dict[str, dict[str, Any]] = {}
        for key in [k for k in data if k not in cls.model_fields]:
            if key not in names:
                raise ValueError(f"unknown setting {key!r}")
            group, field = names[key]
            given.setdefault(group, {})[field] = data.pop(key)
        for group, group_cls in cls.GROUPS.items():
            if not isinstance(data.get(group), BaseModel):
                data[group] = group_cls(**{**(data.get(group) or {}), **given.get(group, {})})
        queues = dict(data.get("queues") or {})
        for spec in QUEUES.values():
            if not isinstance(queues.get(spec.name), QueueSettings):
                own = {**(queues.get(spec.name) or {}), **given.get(f"queues.{spec.name}", {})}
                queues[spec.name] = QueueSettings.for_queue(spec, own)
        data["queues"] = queues
        return data

    @model_validator(mode="after")
    def _check_tokens(self) -> Settings:
        production = self.deploy.environment == "production"
        if not self.api.tokens:
            if production:
                raise ValueError("API_TOKENS must be set in production")
            self.api.tokens = _dev_tokens()
        if production:
            dev = {t.sha256 for t in _dev_tokens()}
            if any(t.sha256 in dev for t in self.api.tokens):
                raise ValueError("the development tokens are refused in production")
        return self

    @model_validator(mode="after")
    def _check_queues(self) -> Settings:
        visibility = self.celery.visibility_timeout
        for name, queue in self.queues.items():
            prefix = registry.spec(name).env_prefix
            if queue.soft_time_limit >= queue.time_limit:
                raise ValueError(f"{prefix}SOFT_TIME_LIMIT must be below its TIME_LIMIT")
            if queue.time_limit >= visibility:
                # A message whose visibility expires while it still runs is redelivered to a
                # second worker: the task runs twice (DESIGN "Operating contract").
                raise ValueError(
                    f"CELERY_VISIBILITY_TIMEOUT ({visibility}s) must exceed "
                    f"{prefix}TIME_LIMIT ({queue.time_limit}s)"
                )
        return self

    @model_validator(mode="after")
    def _check_janitor(self) -> Settings:
        # A flusher holds a batch id in memory for at most the counters hard time limit; a
        # ledger row must outlive that by far, or a late flusher could apply its batch twice
        # (docs/counters.md, "Ledger retention").
        limit = self.queues["counters"].time_limit if "counters" in self.queues else 0
        if self.janitor.retention_ledger_days * 86400 < 100 * limit:
            raise ValueError("RETENTION_LEDGER_DAYS must exceed 100 x COUNTERS_TIME_LIMIT")
        return self

    # --- derived ------------------------------------------------------------------------------
    @property
    def broker_url(self) -> str:
        return self.celery.broker_url or self.stores.redis_url

    @property
    def result_backend(self) -> str:
        return self.celery.result_backend or self.stores.redis_url

    def queue(self, name: str) -> QueueSettings:
        """The settings of a registered queue (UnknownQueue names the registry)."""
        return self.queues[registry.spec(name).name]

    def values(self) -> dict[str, Any]:
        """Every setting by its variable name (python values)."""
        out: dict[str, Any] = {}
        for env, (group, field) in self.env_names().items():
            if group.startswith("queues."):
                queue = self.queues.get(group.removeprefix("queues."))
                if queue is not None:
                    out[env] = getattr(queue, field)
            else:
                out[env] = getattr(getattr(self, group), field)
        return out

    def replace(self, **variables: Any) -> Settings:
        """A copy with some variables changed: `settings.replace(REDIS_URL=...)`."""
        return Settings(**{**self.values(), **variables})

    def env(self) -> dict[str, str]:
        """Environment that makes a child process read exactly these settings."""
        out: dict[str, str] = {}
        names = self.env_names()
        for key, value in self.values().items():
            if names[key][0].startswith("queues.") and isinstance(value, list):
                if value:
                    out[key] = ",".join(value)  # <QUEUE>_QUEUES is comma-separated
            elif isinstance(value, list):
                out[key] = json.dumps(
                    [v.model_dump() if isinstance(v, BaseModel) else v for v in value]
                )
            elif isinstance(value, dict):
                out[key] = json.dumps(value)
            elif value != "":
                # Empty is left out, never exported as "": some libraries read these variables
                # themselves (prometheus_client takes PROMETHEUS_MULTIPROC_DIR="" as a directory).
                out[key] = str(value)
        return out


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read once. Tests build `Settings(...)` directly instead."""
    return Settings()
