"""Field report 004's dispatch design, for bench_dispatch only (never product code):

- producer: take a Redis lock, INSERT + COMMIT the row, SETEX a `task_created:{id}` marker,
  `send_task(..., countdown=2)` "so the transaction is surely committed", release the lock;
- worker task: check the marker and the row with up to 5 tries and a growing sleep
  (1.0 s x 1.5^n), then mark the row running.

Run as a worker with `python -m celery -A bench.dispatch_naive worker -Q naive`.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid

import asyncpg
import redis
from celery import Celery

QUEUE = "naive"
app = Celery("naive", broker=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    task_ignore_result=True,
    task_default_queue=QUEUE,
    worker_hijack_root_logger=False,
)


def _dsn() -> str:
    return os.environ["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://", 1)


async def _exists_and_start(scan_id: str) -> bool:
    conn = await asyncpg.connect(_dsn())
    try:
        row = await conn.fetchrow("SELECT id FROM scans WHERE id = $1", uuid.UUID(scan_id))
        if row is None:
            return False
        await conn.execute(
            "UPDATE scans SET status = 'running', started_at = now() WHERE id = $1",
            uuid.UUID(scan_id),
        )
        return True
    finally:
        await conn.close()


@app.task(name="scan_domain_task")
def scan_domain_task(scan_id: str) -> bool:
    r = redis.Redis.from_url(os.environ["REDIS_URL"])
    delay = 1.0
    for attempt in range(5):
        if r.get(f"task_created:{scan_id}") and asyncio.run(_exists_and_start(scan_id)):
            return True
        if attempt < 4:
            time.sleep(delay)
            delay *= 1.5
    return False


async def create(conn: asyncpg.Connection, r: redis.Redis, domain: str) -> str:
    """The report's API handler: lock, insert + commit, marker, countdown=2."""
    scan_id = str(uuid.uuid4())
    lock = r.lock(f"lock:task_create:{scan_id}", timeout=60, blocking_timeout=30)
    with lock:
        await conn.execute(
            "INSERT INTO scans (id, owner, domain) VALUES ($1, 'bench', $2)",
            uuid.UUID(scan_id),
            domain,
        )
        r.setex(f"task_created:{scan_id}", 300, "created")
        app.send_task("scan_domain_task", args=[scan_id], countdown=2, queue=QUEUE)
    return scan_id
