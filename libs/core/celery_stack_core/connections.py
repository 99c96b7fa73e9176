"""Per-process database engine and Redis client for worker tasks.

Keyed by pid: a prefork child must never reuse a socket it inherited from its parent. Both are
used from the process's own event loop (celery_stack_core.aio).
"""

from __future__ import annotations

import functools
import os

import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine

from celery_stack_core.config import get_settings
from celery_stack_core.db import make_engine
from celery_stack_core.redis_client import make_async_redis


@functools.cache
def _engine(pid: int) -> AsyncEngine:
    return make_engine(get_settings(), pool_size=2)


@functools.cache
def _redis(pid: int) -> aioredis.Redis:
    return make_async_redis(get_settings())


def engine() -> AsyncEngine:
    return _engine(os.getpid())


def redis() -> aioredis.Redis:
    return _redis(os.getpid())
