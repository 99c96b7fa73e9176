"""Counter endpoints: views (buffered), likes/collects/shares (action rows), counts."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from enum import Enum
from typing import Annotated, Any, Literal, NotRequired

from fastapi import APIRouter, Body, HTTPException, status
from pydantic import BaseModel, ConfigDict, Field
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from celery_stack_api import counting
from celery_stack_api.deps import ActingUser, StateDep, TargetId, UserDep
from celery_stack_core.jsontypes import JsonInteger
from celery_stack_core.targets import TARGETS_BY_URL, ActionKind

router = APIRouter(prefix="/api/v1", tags=["counters"])


class TargetPath(str, Enum):
    """Everything that has counts."""

    posts = "posts"
    articles = "articles"
    post_comments = "post-comments"
    article_comments = "article-comments"


class ViewedPath(str, Enum):
    """What has a view counter."""

    posts = "posts"
    articles = "articles"


class ViewIn(BaseModel):
    viewer_id: str | None = Field(
        default=None, min_length=1, max_length=128, description="Counted once in unique viewers."
    )


class ViewOut(BaseModel):
    accepted: bool = True
    path: str = Field(
        description="`buffered` (Redis) or `direct` (Redis was down; written to PostgreSQL)."
    )


class CountsOut(BaseModel):
    # Extra keys a newer read path adds are passed through, not dropped.
    model_config = ConfigDict(extra="allow")
    id: int
    type: str
    counts: dict[str, int] = Field(
        description="Exact counts: the database value plus what Redis still buffers."
    )
    unique_viewers: int | None = Field(
        default=None,
        description=(
            "An ESTIMATE of distinct `viewer_id`s (Redis HyperLogLog, standard error about"
            " 0.81%: 200 viewers may read 199 or 201), not an exact count. Absent where the"
            " target has no views."
        ),
    )
    partial: bool | None = Field(
        default=None,
        description="True when Redis was unreachable: buffered increments are not included.",
    )


class ActionOut(BaseModel):
    kind: str
    active: bool
    changed: bool


def _spec(target: Enum) -> Any:
    return TARGETS_BY_URL[str(target.value)]


@router.post(
    "/{target}/{target_id}/views",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ViewOut,
    responses={
        404: {"description": "No such row"},
        503: {"description": "Redis and PostgreSQL down"},
    },
)
async def record_view(
    *,
    target: ViewedPath,
    target_id: TargetId,
    state: StateDep,
    _: UserDep,
    body: Annotated[ViewIn | None, Body()] = None,
) -> ViewOut:
    viewer = body.viewer_id if body else None
    path = await counting.record_view(state, _spec(target).type, target_id, viewer)
    return ViewOut(path=path)


@router.get(
    "/{target}/{target_id}/counts", response_model=CountsOut, response_model_exclude_none=True
)
async def read_counts(
    *, target: TargetPath, target_id: TargetId, state: StateDep, _: UserDep
) -> dict[str, Any]:
    return await counting.read_counts(state, _spec(target).type, target_id)


# (operation name, method, path segment, kind, on): one handler serves them all.
ACTIONS: tuple[tuple[str, str, str, ActionKind, bool], ...] = (
    ("like", "PUT", "like", "like", True),
    ("unlike", "DELETE", "like", "like", False),
    ("collect", "PUT", "collect", "collect", True),
    ("uncollect", "DELETE", "collect", "collect", False),
    ("share", "POST", "share", "share", True),
)


def _action(kind: ActionKind, *, on: bool) -> Callable[..., Awaitable[ActionOut]]:
    async def action(
        *, target: TargetPath, target_id: TargetId, user: ActingUser, state: StateDep, _: UserDep
    ) -> ActionOut:
        spec = _spec(target)
        if kind not in spec.actions:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"{spec.url} cannot be given a {kind}")
        changed = await counting.set_action(state, spec.type, target_id, user, kind, on=on)
        return ActionOut(kind=kind, active=on, changed=changed)

    return action


# --- bulk view ingest (log processors, edge aggregators) ---------------------------------------
VIEW_BATCH_MAX_ITEMS = 10_000
VIEW_BATCH_MAX_COUNT = 1_000_000


class ViewBatchItem(TypedDict):
    # A TypedDict, not a model: validated items stay plain dicts (no object per item), and the
    # route and the fast path (fastpath.py) validate with this same type. JSON's integers
    # (jsontypes): `true` and `"5"` are not ids or counts, `5.0` is.
    target: Annotated[Literal["post", "article"], Field(description="What was viewed.")]
    id: Annotated[int, JsonInteger(1, 2**63 - 1), Field(description="Row id (positive bigint).")]
    count: NotRequired[
        Annotated[
            int,
            JsonInteger(1, VIEW_BATCH_MAX_COUNT),
            Field(default=1, description="Views of this id to add."),
        ]
    ]


class ViewBatchIn(BaseModel):
    items: list[ViewBatchItem] = Field(min_length=1, max_length=VIEW_BATCH_MAX_ITEMS)


class ViewRef(BaseModel):
    target: str
    id: int


class ViewBatchOut(BaseModel):
    accepted: int = Field(description="Views buffered (the sum of the accepted counts).")
    unknown: list[ViewRef] = Field(description="Ids with no row: not counted.")


def batch_answer(out: counting.BatchOutcome) -> ViewBatchOut:
    return ViewBatchOut(
        accepted=out.accepted, unknown=[ViewRef(target=t, id=i) for t, i in out.unknown]
    )


@router.post(
    "/views:batch",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=ViewBatchOut,
    responses={503: {"description": "Redis unreachable: nothing was buffered, retry"}},
)
async def record_views_batch(*, body: ViewBatchIn, state: StateDep, _: UserDep) -> ViewBatchOut:
    """Many views in one request, buffered with one Redis round trip, all or none; the same
    exactly-once flush as single views. An id listed twice counts both."""
    out = await counting.record_views_batch(state, counting.sum_views(body.items))
    return batch_answer(out)


for _name, _method, _segment, _kind, _on in ACTIONS:
    router.add_api_route(
        f"/{{target}}/{{target_id}}/{_segment}",
        _action(_kind, on=_on),
        methods=[_method],
        name=_name,
        response_model=ActionOut,
    )
