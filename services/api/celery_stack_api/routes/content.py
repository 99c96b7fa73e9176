"""Routes for posts, articles and their comments; the work is in celery_stack_api.content.

One handler per operation, registered once per target that has it (posts and articles alike).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, status
from pydantic import BaseModel, Field

from celery_stack_api import content
from celery_stack_api.deps import ActingUser, StateDep, TargetId, UserDep
from celery_stack_core.targets import TARGETS, TargetType

router = APIRouter(prefix="/api/v1", tags=["content"])


class ContentIn(BaseModel):
    title: str = Field(min_length=1, max_length=500)


class CommentIn(BaseModel):
    body: str = Field(min_length=1, max_length=10_000)


class Created(BaseModel):
    id: int


class Deleted(BaseModel):
    deleted: int


def _create(target: TargetType) -> Callable[..., Awaitable[Created]]:
    async def create(*, body: ContentIn, user: ActingUser, state: StateDep, _: UserDep) -> Created:
        return Created(
            id=await content.create_content(state, target, author=user, title=body.title)
        )

    return create


def _comment(parent: TargetType) -> Callable[..., Awaitable[Created]]:
    async def comment(
        *, target_id: TargetId, body: CommentIn, user: ActingUser, state: StateDep, _: UserDep
    ) -> Created:
        new_id = await content.create_comment(state, parent, target_id, author=user, body=body.body)
        return Created(id=new_id)

    return comment


def _delete_comment(parent: TargetType) -> Callable[..., Awaitable[Deleted]]:
    async def delete_comment(
        *, target_id: TargetId, user: ActingUser, state: StateDep, _: UserDep
    ) -> Deleted:
        await content.delete_comment(state, parent, target_id, author=user)
        return Deleted(deleted=target_id)

    return delete_comment


_CREATED: dict[str, Any] = {"status_code": status.HTTP_201_CREATED, "response_model": Created}
for _spec in TARGETS.values():
    if _spec.comment_table is None:
        continue  # comments have no comments
    router.add_api_route(
        f"/{_spec.url}",
        _create(_spec.type),
        methods=["POST"],
        name=f"create_{_spec.type}",
        **_CREATED,
    )
    router.add_api_route(
        f"/{_spec.url}/{{target_id}}/comments",
        _comment(_spec.type),
        methods=["POST"],
        name=f"create_{_spec.type}_comment",
        **_CREATED,
    )
    router.add_api_route(
        f"/{_spec.type.replace('_', '-')}-comments/{{target_id}}",
        _delete_comment(_spec.type),
        methods=["DELETE"],
        name=f"delete_{_spec.type}_comment",
        response_model=Deleted,
    )
