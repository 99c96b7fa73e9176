"""Which of a batch of row ids still exist: one indexed query per table per batch."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy import Table, bindparam, select
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.ext.asyncio import AsyncEngine

from celery_stack_core.models import MaintenanceJob, Scan
from celery_stack_core.sweeps.taskids import TaskRef

TABLES: dict[str, Table] = {
    "scan": Scan.__table__,
    "job": MaintenanceJob.__table__,
}
_IDS = bindparam("ids", type_=ARRAY(UUID(as_uuid=True)))


async def existing(engine: AsyncEngine, refs: Iterable[TaskRef]) -> set[uuid.UUID]:
    """The ids among `refs` whose row exists (refs without a table are not asked about)."""
    wanted: dict[str, list[uuid.UUID]] = {}
    for ref in refs:
        if ref.row_id is not None and ref.kind in TABLES:
            wanted.setdefault(ref.kind, []).append(ref.row_id)
    found: set[uuid.UUID] = set()
    if not wanted:
        return found
    async with engine.connect() as conn:
        for kind, ids in wanted.items():
            table = TABLES[kind]
            stmt = select(table.c.id).where(table.c.id == _IDS.any_())
            found.update((await conn.execute(stmt, {"ids": ids})).scalars())
    return found
