"""What the app holds for its lifetime: settings, engine, Redis, caches."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis.asyncio as aioredis
from cachetools import TTLCache
from celery import Celery
from sqlalchemy.ext.asyncio import AsyncEngine

from celery_stack_api.auth import TokenTable
from celery_stack_core.config import Settings


@dataclass
class AppState:
    settings: Settings
    engine: AsyncEngine
    redis: aioredis.Redis
    tokens: TokenTable
    # Producer for the outbox publish after COMMIT (scans); made in the lifespan.
    celery: Celery | None = None
    # (target, id) known to exist: view ingest skips the database for these.
    known_ids: TTLCache[tuple[str, int], bool] = field(init=False)

    def __post_init__(self) -> None:
        self.known_ids = TTLCache(
            maxsize=max(1, self.settings.counters.view_id_cache_size),
            ttl=self.settings.counters.view_id_cache_ttl,
        )
