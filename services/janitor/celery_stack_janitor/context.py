"""Build a sweep context for this process: stores, the pod snapshot, and a Celery producer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from celery import Celery

from celery_stack_core import outbox
from celery_stack_core.celery_app import make_celery
from celery_stack_core.config import Settings
from celery_stack_core.db import make_engine
from celery_stack_core.redis_client import make_async_redis
from celery_stack_core.sweeps.base import SweepContext, TaskSender
from celery_stack_core.sweeps.kube import pod_snapshot


def task_sender(app: Celery) -> TaskSender:
    async def send(name: str, task_id: str) -> None:
        await asyncio.to_thread(
            app.send_task, name, task_id=task_id, retry=False, ignore_result=True
        )

    return send


@contextlib.asynccontextmanager
async def sweep_context(settings: Settings, **overrides: object) -> AsyncIterator[SweepContext]:
    """A context with its own engine, Redis client and producer, closed on exit (CLI, operator)."""
    engine = make_engine(settings, pool_size=2)
    redis = make_async_redis(settings)
    app = outbox.fail_fast(make_celery(settings, "celery_stack_janitor_cli"))
    try:
        yield SweepContext(
            redis,
            engine,
            settings,
            pods=pod_snapshot(settings),
            publish=outbox.celery_publisher(app),
            send_task=task_sender(app),
            **overrides,
        )
    finally:
        app.close()
        await redis.aclose()
        await engine.dispose()
