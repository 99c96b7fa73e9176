"""Which of a batch of row ids still exist (or are gone): one indexed query per table per batch."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy import Select, Table, bindparam, exists, func, select
from sqlalchemy.dialects.postgresql import ARRAY, UUID
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from celery_stack_core.models import MaintenanceJob, Scan
from celery_stack_core.sweeps.taskids import TaskRef

TABLES: dict[str, Table] = {
    "scan": Scan.__table__,
    "job": MaintenanceJob.__table__,
}
_IDS = bindparam("ids", type_=ARRAY(UUID(as_uuid=True)))
_ID_TEXTS = bindparam("ids", type_=ARRAY(UUID(as_uuid=False)))


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


def _missing_stmt(table: Table) -> Select[tuple[object]]:
    # unnest($ids) anti-joined on the primary key: one index probe per id, and only the gone
    # ids come back (the few orphans, not the many live rows)
    ids = func.unnest(_ID_TEXTS).table_valued("id").render_derived()
    return select(ids.c.id).where(~exists().where(table.c.id == ids.c.id))


MISSING = {kind: _missing_stmt(table) for kind, table in TABLES.items()}


async def missing(conn: AsyncConnection, kind: str, ids: list[str]) -> set[str]:
    """The ids (canonical lower-case UUID text) among `ids` that have no row in `kind`'s table."""
    if not ids:
        return set()
    return {str(i) for i in (await conn.execute(MISSING[kind], {"ids": ids})).scalars()}
