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
    ENVIRONMENT: Literal["local", "test", "production"] = "local"
    SERVICE_NAME: str = "celery-stack"
    LOG_LEVEL: str = "INFO"
    # Identity of this process for lock owner records: the pod UID via the Downward API on
    # Kubernetes; host+pid+boot id locally when empty.
    POD_NAME: str = ""
    POD_UID: str = ""

    # --- stores -------------------------------------------------------------------------------
    DATABASE_URL: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/celery_stack"
    DATABASE_POOL_SIZE: int = Field(default=5, ge=1, le=100)
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
    COUNTER_FLUSH_INTERVAL: float = Field(default=2.0, gt=0)
    RECOUNT_INTERVAL: float = Field(default=2.0, gt=0)
    RECOUNT_BATCH_SIZE: int = Field(default=500, ge=1, le=10_000)
    # A dirty target claimed by a drainer that died is retried after this many seconds.
    RECOUNT_CLAIM_TIMEOUT: float = Field(default=60.0, gt=0)
    RECONCILE_INTERVAL: float = Field(default=3600.0, gt=0)
    RECONCILE_BATCH_SIZE: int = Field(default=2000, ge=1)
    # Lease held per shard while flushing; renewed every third of it while the holder works.
    FLUSH_LEASE_TTL: float = Field(default=30.0, gt=0)
    # Existence cache for view ingest: ids known to exist skip the database on the hot path.
    VIEW_ID_CACHE_SIZE: int = Field(default=100_000, ge=0)
    VIEW_ID_CACHE_TTL: float = Field(default=300.0, ge=0)

    # --- api ----------------------------------------------------------------------------------
    # JSON list of {"name", "sha256", "scopes"}; `celery-stack-api hash-token` makes a digest.
    API_TOKENS: Annotated[list[TokenSpec], NoDecode] = Field(default_factory=list)
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
    WORKER_HEARTBEAT_INTERVAL: float = Field(default=5.0, gt=0)

    # --- beat ---------------------------------------------------------------------------------
    BEAT_TICK: float = Field(default=0.5, gt=0)

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
