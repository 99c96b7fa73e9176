"""The counted things themselves: posts, articles and their comments (enough to use counters).

Plain functions over the engine and Redis; routes/content.py only maps HTTP onto them.
"""

from __future__ import annotations

from sqlalchemy import Table, delete, exists, insert, literal, select

from celery_stack_api.counting import NotFound, mark_dirty
from celery_stack_api.state import AppState
from celery_stack_core.models import Base
from celery_stack_core.targets import TARGETS, TargetType


def _table(name: str) -> Table:
    return Base.metadata.tables[name]


async def create_content(state: AppState, target: TargetType, *, author: str, title: str) -> int:
    table = _table(TARGETS[target].table)
    async with state.engine.begin() as conn:
        row = await conn.execute(
            insert(table).values(author_id=author, title=title).returning(table.c.id)
        )
        return int(row.scalar_one())


def _comments(parent: TargetType) -> tuple[Table, str]:
    spec = TARGETS[parent]
    assert spec.comment_table and spec.comment_fk, f"{parent} has no comments"
    return _table(spec.comment_table), spec.comment_fk


async def create_comment(
    state: AppState, parent: TargetType, parent_id: int, *, author: str, body: str
) -> int:
    """NotFound when the parent does not exist; the parent's comment count is marked dirty."""
    comments, fk = _comments(parent)
    parents = _table(TARGETS[parent].table)
    # INSERT ... SELECT ... WHERE EXISTS: the parent check and the insert in one statement.
    source = select(literal(parent_id), literal(author), literal(body)).where(
        exists().where(parents.c.id == parent_id)
    )
    stmt = (
        insert(comments)
        .from_select([comments.c[fk], comments.c.author_id, comments.c.body], source)
        .returning(comments.c.id)
    )
    async with state.engine.begin() as conn:
        new_id = (await conn.execute(stmt)).scalar()
    if new_id is None:
        raise NotFound(f"{parent} {parent_id} does not exist")
    await mark_dirty(state.redis, parent, parent_id)
    return int(new_id)


async def delete_comment(
    state: AppState, parent: TargetType, comment_id: int, *, author: str
) -> None:
    """Only its author deletes a comment; anyone else gets NotFound, as if it did not exist."""
    comments, fk = _comments(parent)
    stmt = (
        delete(comments)
        .where(comments.c.id == comment_id, comments.c.author_id == author)
        .returning(comments.c[fk])
    )
    async with state.engine.begin() as conn:
        parent_id = (await conn.execute(stmt)).scalar()
    if parent_id is None:
        raise NotFound(f"no comment {comment_id} by this user")
    await mark_dirty(state.redis, parent, int(parent_id))
