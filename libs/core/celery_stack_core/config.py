"""Settings from the environment, one variable per knob (docs/configuration.md lists them all).

Defaults run locally against `make run`'s servers; production sets URLs through Secrets.
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

Queue = Literal["counters", "scans", "maintenance"]
QUEUES: tuple[Queue, ...] = ("counters", "scans", "maintenance")

# Development tokens, accepted only when ENVIRONMENT=local or test (see _refuse_dev_tokens).
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


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_ignore_empty=True, extra="ignore")

    # --- deployment ---------------------------------------------------------------------------
    # local and test accept the development tokens; production refuses them and requires
    # API_TOKENS.
    ENVIRONMENT: Literal["local", "test", "production"] = "local"

    # Reported to PostgreSQL as application_name.
    SERVICE_NAME: str = "celery-stack"

    # Python log level of every service (logs are JSON lines on stdout).
    LOG_LEVEL: str = "INFO"

    # Identity of this process for lock owner records and beat's Lease holder: pod name and
    # UID via the Downward API on Kubernetes; host+pid+boot id locally when empty.
    POD_NAME: str = ""
    POD_UID: str = ""

    # --- stores -------------------------------------------------------------------------------
    # PostgreSQL, SQLAlchemy URL with the asyncpg driver. A Secret in production.
    DATABASE_URL: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/celery_stack"

    # Connections per process in the SQLAlchemy pool (plus 2 overflow).
    DATABASE_POOL_SIZE: int = Field(default=5, ge=1, le=100)

    # Redis for counters, leases and beat; needs AOF (docs/loss-bounds.md).
    REDIS_URL: str = "redis://127.0.0.1:6379/0"

    # The broker and result backend default to REDIS_URL; split them in production if you like.
    CELERY_BROKER_URL: str = ""
    CELERY_RESULT_BACKEND: str = ""
    # Seconds a result key lives; every result gets a TTL (field report 002).
    CELERY_RESULT_EXPIRES: int = Field(default=3600, ge=60)
    # An unacked message returns to the queue after this long: must exceed every hard limit.
    CELERY_VISIBILITY_TIMEOUT: int = Field(default=3600, ge=10)
    # Seconds a worker keeps running tasks after SIGTERM before requeueing them (Celery 5.5).
    CELERY_SOFT_SHUTDOWN_TIMEOUT: float = Field(default=20.0, ge=0)

    # --- per-queue limits (seconds) ----------------------------------------------------------
    # Per queue: soft limit (the task gets SoftTimeLimitExceeded), hard limit (its process is
    # killed) and prefetch per worker process.
    COUNTERS_SOFT_TIME_LIMIT: int = Field(default=50, ge=1)
    COUNTERS_TIME_LIMIT: int = Field(default=60, ge=1)
    COUNTERS_PREFETCH: int = Field(default=1, ge=1)
    SCANS_SOFT_TIME_LIMIT: int = Field(default=240, ge=1)
    SCANS_TIME_LIMIT: int = Field(default=300, ge=1)
    SCANS_PREFETCH: int = Field(default=1, ge=1)
    MAINTENANCE_SOFT_TIME_LIMIT: int = Field(default=240, ge=1)
    MAINTENANCE_TIME_LIMIT: int = Field(default=300, ge=1)
    MAINTENANCE_PREFETCH: int = Field(default=1, ge=1)

    # --- counters -----------------------------------------------------------------------------
    # Pending hashes per entity/field; an id always lands in the same shard.
    COUNTER_SHARDS: int = Field(default=8, ge=1, le=1024)

    # Seconds between flushes of the view buffers (beat sends counters.flush).
    COUNTER_FLUSH_INTERVAL: float = Field(default=2.0, gt=0)

    # Seconds between drains of the dirty set (beat sends counters.recount).
    RECOUNT_INTERVAL: float = Field(default=2.0, gt=0)

    # Targets recounted per statement.
    RECOUNT_BATCH_SIZE: int = Field(default=500, ge=1, le=10_000)

    # A dirty target claimed by a drainer that died is retried after this many seconds.
    RECOUNT_CLAIM_TIMEOUT: float = Field(default=60.0, gt=0)

    # Full reconciliation: seconds between runs and rows per statement.
    RECONCILE_INTERVAL: float = Field(default=3600.0, gt=0)
    RECONCILE_BATCH_SIZE: int = Field(default=2000, ge=1)

    # Lease held per shard while flushing; renewed every third of it while the holder works.
    FLUSH_LEASE_TTL: float = Field(default=30.0, gt=0)

    # Existence cache for view ingest (entries, seconds): ids known to exist skip the database
    # on the hot path.
    VIEW_ID_CACHE_SIZE: int = Field(default=100_000, ge=0)
    VIEW_ID_CACHE_TTL: float = Field(default=300.0, ge=0)

    # --- api ----------------------------------------------------------------------------------
    # JSON list of {"name", "sha256", "scopes"}; `celery-stack-api hash-token` makes a digest.
    API_TOKENS: Annotated[list[TokenSpec], NoDecode] = Field(default_factory=list)

    # Larger request bodies are refused with 413 before they are read.
    API_MAX_BODY_BYTES: int = Field(default=64 * 1024, ge=1024)

    # --- observability ------------------------------------------------------------------------
    # Port for /metrics of workers and beat (the API serves /metrics itself).
    METRICS_PORT: int = Field(default=9808, ge=0, le=65535)
    # Directory for prometheus-client multiprocess files (prefork workers); empty = single process.
    PROMETHEUS_MULTIPROC_DIR: str = ""
    # OTLP/HTTP endpoint; traces go nowhere when empty.
    OTEL_EXPORTER_OTLP_ENDPOINT: str = ""
    # File a worker touches while it consumes; the liveness probe checks its age.
    WORKER_HEARTBEAT_FILE: str = "/tmp/celery-stack-worker-alive"  # noqa: S108

    # Seconds between touches of WORKER_HEARTBEAT_FILE.
    WORKER_HEARTBEAT_INTERVAL: float = Field(default=5.0, gt=0)

    # --- beat ---------------------------------------------------------------------------------
    # Seconds between schedule checks of the leader.
    BEAT_TICK: float = Field(default=0.5, gt=0)

    # Leader election backend: a Kubernetes Lease when in-cluster config exists ("auto"), else
    # a Redis lease with an epoch counter; "redis" or "kubernetes" forces one.
    BEAT_ELECTION: Literal["auto", "redis", "kubernetes"] = "auto"
    # Lease timing (client-go's defaults): the lease lasts BEAT_LEASE_DURATION after the last
    # renewal; the leader gives up (and stops sending) when it could not renew for
    # BEAT_RENEW_DEADLINE; renewals and standby attempts happen every BEAT_RETRY_PERIOD.
    BEAT_LEASE_DURATION: float = Field(default=15.0, gt=0)
    BEAT_RENEW_DEADLINE: float = Field(default=10.0, gt=0)
    BEAT_RETRY_PERIOD: float = Field(default=2.0, gt=0)
    # Kubernetes Lease object; the namespace defaults to the pod's own (service account).
    BEAT_LEASE_NAME: str = "celery-stack-beat"
    BEAT_LEASE_NAMESPACE: str = ""
    # Claimed slot keys live this long (at least three intervals of their entry).
    BEAT_SLOT_TTL: float = Field(default=3600.0, gt=0)
    # Catch-up "all" sends at most this many missed slots per entry; older ones count as missed.
    BEAT_CATCHUP_MAX: int = Field(default=100, ge=1)
    # Catch-up "skip" still sends a slot this many seconds late (a normal tick or a fast
    # handover); later slots are dropped and counted as missed.
    BEAT_SKIP_GRACE: float = Field(default=5.0, ge=0)
    # Liveness: touched by the leader after every tick, by a standby after every attempt;
    # `celery-stack-beat alive` fails when it is older than BEAT_ALIVE_MAX_AGE.
    BEAT_HEARTBEAT_FILE: str = "/tmp/celery-stack-beat-alive"  # noqa: S108
    BEAT_ALIVE_MAX_AGE: float = Field(default=30.0, gt=0)

    # --- scans (begin) ------------------------------------------------------------------------
    # Seconds between heartbeats a running scan writes to its row.
    SCAN_HEARTBEAT_INTERVAL: float = Field(default=2.0, gt=0)
    # A running scan whose heartbeat is older than this belongs to a dead worker: a redelivered
    # message may take it over (at once when that worker is known dead on the same host/pod).
    SCAN_HEARTBEAT_STALE: float = Field(default=15.0, gt=0)
    # Deliveries of one attempt before the scan goes to `dead` (a handler that kills its worker).
    SCAN_MAX_DELIVERIES: int = Field(default=3, ge=1, le=100)
    # Hostname -> addresses used instead of DNS (like curl --resolve): tests and the local demo.
    # JSON object, e.g. {"demo.localtest": ["127.0.0.1"]}. The SSRF guard still applies.
    SCANNER_RESOLVE: Annotated[dict[str, list[str]], NoDecode] = Field(default_factory=dict)
    # Networks the SSRF guard lets through although they are not public (comma-separated CIDRs,
    # e.g. "127.0.0.1/32"). Empty in production. Cloud-metadata addresses are never allowed.
    SCANNER_ALLOW_PRIVATE_CIDRS: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # Extra CA bundle (PEM file) the scanner trusts besides the system store: tests, demo.
    SCANNER_CA_BUNDLE: str = ""
    # Most same-origin pages one scan fetches (a scan's config may ask for fewer).
    SCANNER_MAX_PAGES: int = Field(default=10, ge=1, le=200)
    # Redirects followed per fetch; every hop is resolved and checked by the SSRF guard.
    SCANNER_MAX_REDIRECTS: int = Field(default=5, ge=0, le=20)
    # Seconds per fetch (connect, read, TLS handshake).
    SCANNER_TIMEOUT: float = Field(default=10.0, gt=0)
    # Bytes read per page at most; the rest of a larger body is not downloaded.
    SCANNER_MAX_BYTES: int = Field(default=1_000_000, ge=1024)
    # User-Agent header of the scanner's requests.
    SCANNER_USER_AGENT: str = "celery-stack-scanner/0.1"
    # TLS certificates closer than this to expiry are reported.
    SCANNER_CERT_WARN_DAYS: int = Field(default=30, ge=0)
    # Seconds between runs of the outbox relay (beat entry `outbox-relay`, maintenance queue).
    OUTBOX_RELAY_INTERVAL: float = Field(default=2.0, gt=0)
    # Outbox rows younger than this are left to the API that wrote them (it publishes right
    # after COMMIT); older unsent rows are what a crash or a broker outage left: the relay's.
    # Kept above the broker publish socket timeout (5 s, celery_app.py) so a slow publish by
    # the API is not sent a second time by the relay.
    OUTBOX_RELAY_MIN_AGE: float = Field(default=10.0, ge=0)
    # Rows the relay locks (FOR UPDATE SKIP LOCKED) and sends per batch.
    OUTBOX_RELAY_BATCH: int = Field(default=500, ge=1, le=10_000)

    @field_validator("SCANNER_RESOLVE", mode="before")
    @classmethod
    def _parse_resolve(cls, value: object) -> object:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else {}
        return value

    @field_validator("SCANNER_ALLOW_PRIVATE_CIDRS", mode="before")
    @classmethod
    def _parse_cidrs(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [c.strip() for c in text.split(",") if c.strip()]
        return value

    @model_validator(mode="after")
    def _check_scans(self) -> Settings:
        if self.SCAN_HEARTBEAT_STALE <= 2 * self.SCAN_HEARTBEAT_INTERVAL:
            # One late heartbeat must not hand a live scan to a second worker.
            raise ValueError("SCAN_HEARTBEAT_STALE must exceed twice SCAN_HEARTBEAT_INTERVAL")
        return self

    # --- scans (end) --------------------------------------------------------------------------

    # --- janitor (begin) ----------------------------------------------------------------------
    # Keys asked for per SCAN step (its COUNT hint): one step is a bounded piece of Redis work.
    JANITOR_SCAN_COUNT: int = Field(default=1000, ge=10, le=100_000)
    # Keys one sweep examines per run at most; the next run goes on from the saved cursor.
    JANITOR_MAX_KEYS: int = Field(default=2_000_000, ge=100)
    # Rows per retention transaction, and transactions per sweep per run at most.
    JANITOR_BATCH_SIZE: int = Field(default=1000, ge=1, le=100_000)
    JANITOR_MAX_BATCHES: int = Field(default=100, ge=1)
    # A lock's owner must have been silent (no heartbeat) this many seconds before its lock is
    # released, and on Kubernetes its pod must be gone as well (DESIGN "Locks and the janitor").
    JANITOR_LOCK_GRACE: float = Field(default=30.0, ge=0)
    # A running scan is stuck when its heartbeat is older than SCAN_HEARTBEAT_STALE plus this
    # and its worker is not alive; it is then requeued as a new attempt or marked dead.
    JANITOR_STUCK_SCAN_GRACE: float = Field(default=60.0, ge=0)
    # An in-flight counter batch older than this with no flush lease held gets a flush sent to
    # the counters queue, which resumes it (the flush's own claim returns the in-flight batch).
    JANITOR_INFLIGHT_MAX_AGE: float = Field(default=120.0, gt=0)
    # Dirty-set claims older than RECOUNT_CLAIM_TIMEOUT plus this go back to the dirty set.
    JANITOR_CLAIM_GRACE: float = Field(default=60.0, ge=0)
    # Unsent outbox rows older than this are published by the janitor (the relay missed them).
    JANITOR_OUTBOX_MAX_AGE: float = Field(default=300.0, gt=0)
    # Retention in days: findings of finished scans, sent outbox rows, dead scans, and counter
    # ledger rows (only those whose batch can no longer be resumed, docs/counters.md).
    RETENTION_FINDINGS_DAYS: float = Field(default=90.0, gt=0)
    RETENTION_OUTBOX_DAYS: float = Field(default=7.0, gt=0)
    RETENTION_DEAD_SCANS_DAYS: float = Field(default=30.0, gt=0)
    RETENTION_LEDGER_DAYS: float = Field(default=7.0, gt=0)
    # Seconds a dry run through the API may take; it reports `complete: false` when cut short.
    JANITOR_DRY_RUN_TIMEOUT: float = Field(default=10.0, gt=0)
    # Kubernetes namespace whose pods own locks and scans (the janitor's own when empty and
    # in-cluster); outside Kubernetes pod owners are never released without an event.
    JANITOR_NAMESPACE: str = ""
    # --- janitor (end) ------------------------------------------------------------------------

    @field_validator("API_TOKENS", mode="before")
    @classmethod
    def _parse_tokens(cls, value: object) -> object:
        if isinstance(value, str):
            return json.loads(value) if value.strip() else []
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if not self.API_TOKENS:
            if self.ENVIRONMENT == "production":
                raise ValueError("API_TOKENS must be set in production")
            self.API_TOKENS = _dev_tokens()
        if self.ENVIRONMENT == "production":
            dev = {t.sha256 for t in _dev_tokens()}
            if any(t.sha256 in dev for t in self.API_TOKENS):
                raise ValueError("the development tokens are refused in production")
        for queue in QUEUES:
            soft, hard = self.soft_time_limit(queue), self.time_limit(queue)
            if soft >= hard:
                raise ValueError(f"{queue.upper()}_SOFT_TIME_LIMIT must be below its TIME_LIMIT")
            if hard >= self.CELERY_VISIBILITY_TIMEOUT:
                # A message whose visibility expires while it still runs is redelivered to a
                # second worker: the task runs twice (DESIGN "Operating contract").
                raise ValueError(
                    f"CELERY_VISIBILITY_TIMEOUT ({self.CELERY_VISIBILITY_TIMEOUT}s) must exceed "
                    f"{queue.upper()}_TIME_LIMIT ({hard}s)"
                )
        return self

    @model_validator(mode="after")
    def _check_janitor(self) -> Settings:
        # A flusher holds a batch id in memory for at most COUNTERS_TIME_LIMIT; a ledger row
        # must outlive that by far, or a late flusher could apply its batch twice.
        if self.RETENTION_LEDGER_DAYS * 86400 < 100 * self.COUNTERS_TIME_LIMIT:
            raise ValueError("RETENTION_LEDGER_DAYS must exceed 100 x COUNTERS_TIME_LIMIT")
        return self

    @model_validator(mode="after")
    def _check_beat(self) -> Settings:
        # A leader must stop sending (renew deadline) before its lease can expire and a standby
        # take over; renewals must be attempted several times within the deadline.
        if not self.BEAT_RETRY_PERIOD < self.BEAT_RENEW_DEADLINE < self.BEAT_LEASE_DURATION:
            raise ValueError(
                "beat timing needs BEAT_RETRY_PERIOD < BEAT_RENEW_DEADLINE < BEAT_LEASE_DURATION"
            )
        if self.BEAT_TICK >= self.BEAT_RENEW_DEADLINE:
            raise ValueError("BEAT_TICK must be below BEAT_RENEW_DEADLINE")
        return self

    # --- derived ------------------------------------------------------------------------------
    @property
    def broker_url(self) -> str:
        return self.CELERY_BROKER_URL or self.REDIS_URL

    @property
    def result_backend(self) -> str:
        return self.CELERY_RESULT_BACKEND or self.REDIS_URL

    def soft_time_limit(self, queue: Queue) -> int:
        return int(getattr(self, f"{queue.upper()}_SOFT_TIME_LIMIT"))

    def time_limit(self, queue: Queue) -> int:
        return int(getattr(self, f"{queue.upper()}_TIME_LIMIT"))

    def prefetch(self, queue: Queue) -> int:
        return int(getattr(self, f"{queue.upper()}_PREFETCH"))


@functools.cache
def get_settings() -> Settings:
    """The process's settings, read once. Tests build `Settings(...)` directly instead."""
    return Settings()
