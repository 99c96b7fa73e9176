"""The outbox relay: what the API could not publish after COMMIT (it crashed, or the broker was
down) is sent from here, every OUTBOX_RELAY_INTERVAL seconds via beat."""

from __future__ import annotations

from celery import Celery
from sqlalchemy.ext.asyncio import AsyncEngine

from celery_stack_core import outbox


async def relay_all(
    engine: AsyncEngine, app: Celery, *, batch_size: int, min_age: float, max_batches: int = 20
) -> int:
    """Send batches until none is left (bounded); the number of rows sent."""
    publish = outbox.celery_publisher(app)
    total = 0
    for _ in range(max_batches):
        result = await outbox.relay(engine, publish, batch_size=batch_size, min_age=min_age)
        total += result.sent
        if result.failed or result.sent < batch_size:
            break
    return total
