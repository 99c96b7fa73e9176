"""The counted things themselves: posts, articles and their comments (enough to use counters)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field
from sqlalchemy import text

from celery_stack_api.counting import mark_dirty
from celery_stack_api.deps import ActingUser, StateDep, TargetId, UserDep
from celery_stack_core.targets import TARGETS

router = APIRouter(prefix="/api/v1", tags=["content"])


class ContentIn(BaseModel):
    title: str = Field(min_length=1, max_length=500)


class CommentIn(BaseModel):
    body: str = Field(min_length=1, max_length=10_000)


class Created(BaseModel):
    id: int


async def _create(state: StateDep, table: str, author: str, title: str) -> Created:
    async with state.engine.begin() as conn:
        row = await conn.execute(
            text(f"INSERT INTO {table} (author_id, title) VALUES (:a, :t) RETURNING id"),
            {"a": author, "t": title},
        )
        return Created(id=row.scalar_one())


@router.post("/posts", status_code=status.HTTP_201_CREATED, response_model=Created)
async def create_post(*, body: ContentIn, user: ActingUser, state: StateDep, _: UserDep) -> Created:
    return await _create(state, "posts", user, body.title)


@router.post("/articles", status_code=status.HTTP_201_CREATED, response_model=Created)
async def create_article(
    *, body: ContentIn, user: ActingUser, state: StateDep, _: UserDep
) -> Created:
    return await _create(state, "articles", user, body.title)


async def _comment(state: StateDep, parent: str, parent_id: int, user: str, body: str) -> Created:
    spec = TARGETS[parent]
    async with state.engine.begin() as conn:
        row = await conn.execute(
            text(
                f"INSERT INTO {spec.comment_table} ({spec.comment_fk}, author_id, body) "
                f"SELECT :p, :a, :b WHERE EXISTS (SELECT 1 FROM {spec.table} WHERE id = :p) "
                "RETURNING id"
            ),
            {"p": parent_id, "a": user, "b": body},
        )
        new_id = row.scalar()
    if new_id is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{parent} {parent_id} does not exist")
    await mark_dirty(state.redis, spec.type, parent_id)
    return Created(id=new_id)


@router.post(
    "/posts/{target_id}/comments", status_code=status.HTTP_201_CREATED, response_model=Created
)
async def create_post_comment(
    *, target_id: TargetId, body: CommentIn, user: ActingUser, state: StateDep, _: UserDep
) -> Created:
    return await _comment(state, "post", target_id, user, body.body)


@router.post(
    "/articles/{target_id}/comments", status_code=status.HTTP_201_CREATED, response_model=Created
)
async def create_article_comment(
    *, target_id: TargetId, body: CommentIn, user: ActingUser, state: StateDep, _: UserDep
) -> Created:
    return await _comment(state, "article", target_id, user, body.body)


async def _delete_comment(
    state: StateDep, parent: str, comment_id: int, user: str
) -> dict[str, Any]:
    spec = TARGETS[parent]
    async with state.engine.begin() as conn:
        row = await conn.execute(
            text(
                f"DELETE FROM {spec.comment_table} WHERE id = :id AND author_id = :a "
                f"RETURNING {spec.comment_fk}"
            ),
            {"id": comment_id, "a": user},
        )
        parent_id = row.scalar()
    if parent_id is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no comment {comment_id} by this user")
    await mark_dirty(state.redis, spec.type, parent_id)
    return {"deleted": comment_id}


@router.delete("/post-comments/{target_id}")
async def delete_post_comment(
    *, target_id: TargetId, user: ActingUser, state: StateDep, _: UserDep
) -> dict[str, Any]:
    return await _delete_comment(state, "post", target_id, user)


@router.delete("/article-comments/{target_id}")
async def delete_article_comment(
    *, target_id: TargetId, user: ActingUser, state: StateDep, _: UserDep
) -> dict[str, Any]:
    return await _delete_comment(state, "article", target_id, user)
