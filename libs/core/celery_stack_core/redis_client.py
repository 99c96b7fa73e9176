"""Redis clients with timeouts and reconnects, so a Redis restart is an error we see, not a hang."""

from __future__ import annotations

import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from celery_stack_core.config import Settings


def _opts() -> dict[str, object]:
    return {
        "decode_responses": True,
        "socket_timeout": 5.0,
        "socket_connect_timeout": 2.0,
        "health_check_interval": 15,
        # No silent retries: HINCRBY is not idempotent, and a retried command whose first reply
        # was lost would count twice. Callers whose operations are idempotent retry themselves.
        "retry": Retry(NoBackoff(), 0),
    }


def make_async_redis(settings: Settings, url: str | None = None) -> aioredis.Redis:
    return aioredis.Redis.from_url(url or settings.stores.redis_url, **_opts())  # type: ignore[arg-type]


def make_redis(settings: Settings, url: str | None = None) -> redis.Redis:
    return redis.Redis.from_url(url or settings.stores.redis_url, **_opts())
