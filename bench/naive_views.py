"""Field report 001's design, for bench_views: one Celery task per view, one UPDATE each.

`celery -A bench.naive_views worker -Q naive_views` runs it as a real worker process. The
task is the report's `update_post_view_count(post_id)` on our driver stack (SQLAlchemy async
+ asyncpg, one engine per worker process): one UPDATE and its COMMIT per view. Results are
ignored (generous to the naive side: the report also stored them).
"""

from __future__ import annotations

import os

from celery import Celery
from sqlalchemy import text

from celery_stack_core import aio, connections

QUEUE = "naive_views"
TASK = "naive.update_post_view_count"

app = Celery("naive_views", broker=os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    timezone="UTC",
    task_ignore_result=True,
    task_default_queue=QUEUE,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)


async def _increment(post_id: int) -> None:
    async with connections.engine().begin() as conn:
        await conn.execute(
            text("UPDATE posts SET views = views + 1 WHERE id = :id"), {"id": post_id}
        )


@app.task(name=TASK)
def update_post_view_count(post_id: int) -> None:
    aio.run(_increment(post_id))
