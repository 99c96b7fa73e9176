"""Field report 004's dispatch design as written, for bench_dispatch only (never product code).

- producer (the report's async API handler): under a Redis lock (`lock_manager.lock(key,
  timeout=30, expire_time=60)`), `db.add(task)`, `await db.commit()`, `await db.refresh(task)`,
  SETEX a `task_created:{id}` marker for 300 s; then `send_task(..., countdown=2)` "so the
  transaction is surely committed".
- worker task: `_check_task_exists`: up to 5 tries, each a GET of the marker on the process's
  one Redis client (`cache_manager.redis_client`) and, if present, a SELECT on a pooled
  session; 1.0 s sleep growing x1.5 between tries. Then the scan itself: the same `run_scan`
  our worker runs (which marks the row running: `started_at`), so both designs do the same
  work per scan and only the dispatch differs.

Run as a worker with `python -m celery -A bench.dispatch_naive worker -Q naive`.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

from celery import Celery
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from celery_stack_core import aio, connections
from celery_stack_core.models import Scan

QUEUE = "naive"
TASK = "scan_domain_task"
app = Celery("naive", broker=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    task_ignore_result=True,
    task_default_queue=QUEUE,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


async def _check_task_exists(scan_id: str, max_retries: int = 5, retry_delay: float = 1.0) -> bool:
    redis = connections.redis()
    for attempt in range(max_retries):
        if await redis.get(f"task_created:{scan_id}"):
            async with AsyncSession(connections.engine()) as db:
                found = await db.scalar(select(Scan.id).where(Scan.id == uuid.UUID(scan_id)))
            if found is not None:
                return True
        if attempt < max_retries - 1:
            await asyncio.sleep(retry_delay)
            retry_delay *= 1.5
    return False


async def _scan(scan_id: str) -> str:
    from celery_stack_core.config import get_settings
    from celery_stack_core.identity import owner_id
    from celery_stack_scans.lifecycle import Delivery
    from celery_stack_scans.run import RunLimits, run_scan
    from celery_stack_scans.scanner import ScanOptions

    if not await _check_task_exists(scan_id):
        return "missing"
    settings = get_settings()
    return await run_scan(
        connections.engine(),
        Delivery(uuid.UUID(scan_id), 1, owner_id(settings)),
        options=ScanOptions.from_settings(settings),
        limits=RunLimits(
            heartbeat_interval=settings.scans.heartbeat_interval,
            stale_after=settings.scans.heartbeat_stale,
            max_deliveries=settings.scans.max_deliveries,
            deadline=60.0,
        ),
    )


@app.task(name=TASK)
def scan_domain_task(scan_id: str) -> str:
    return aio.run(_scan(scan_id))


async def create(session: AsyncSession, redis: Any, domain: str, config: dict[str, Any]) -> str:
    """The report's API handler: lock, insert + commit + refresh, marker, countdown=2."""
    scan_id = uuid.uuid4()
    async with redis.lock(f"lock:task_create:{scan_id}", timeout=60, blocking_timeout=30):
        task = Scan(id=scan_id, owner="bench", domain=domain, config=config)
        session.add(task)
        await session.commit()
        await session.refresh(task)
        await redis.setex(f"task_created:{scan_id}", 300, "created")
    app.send_task(TASK, args=[str(scan_id)], countdown=2, queue=QUEUE)
    return str(scan_id)
