"""The example tables of the maintenance rules (report 003's jobs): create and read rows.

    POST /api/v1/examples/{kind}          create (coupons, invitation-codes, point-grants,
                                          activities, marketplace-tasks, agents, chats,
                                          chat-messages)
    GET  /api/v1/examples/{kind}          newest rows (every kind, also point-balances,
                                          user-statistics, expert-stats, rule-notifications)
    GET  /api/v1/examples/{kind}/{key}    one row

Deadlines are given as an absolute time (`expires_at`) or seconds from now (`expires_in`).
A point grant adds to its user's balance and a chat message resets its chat's idle timer, each
in the same transaction as the row.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, status
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import Integer, Table, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from celery_stack_api.deps import StateDep, UserDep
from celery_stack_core import models

router = APIRouter(prefix="/api/v1/examples", tags=["examples"])

Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@\-]+$")]
Text500 = Annotated[str, Field(min_length=1, max_length=500)]
# Up to ten years ahead (or a minute back, to create something already due).
Seconds = Annotated[float, Field(ge=-60, le=10 * 365 * 86_400)]


class _In(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def row(self, now: datetime) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


class _Expiring(_In):
    """`expires_at` or `expires_in` (seconds from now): exactly one."""

    expires_at: datetime | None = None
    expires_in: Seconds | None = None

    @model_validator(mode="after")
    def _one_deadline(self) -> _Expiring:
        if (self.expires_at is None) == (self.expires_in is None):
            raise ValueError("give exactly one of expires_at or expires_in (seconds)")
        if self.expires_at is not None and self.expires_at.tzinfo is None:
            raise ValueError("expires_at needs a timezone (e.g. 2030-01-01T00:00:00Z)")
        return self

    def row(self, now: datetime) -> dict[str, Any]:
        out = self.model_dump(exclude_none=True, exclude={"expires_in"})
        if self.expires_in is not None:
            out["expires_at"] = now + timedelta(seconds=self.expires_in)
        return out


class CouponIn(_Expiring):
    code: Name
    user_id: Name | None = None


class InvitationCodeIn(_Expiring):
    code: Name


class PointGrantIn(_Expiring):
    user_id: Name
    points: int = Field(gt=0, le=10**12)


def _renamed(out: dict[str, Any], column: str) -> dict[str, Any]:
    out[column] = out.pop("expires_at")
    return out


class ActivityIn(_Expiring):
    """`expires_*` is when the activity ends."""

    title: Text500

    def row(self, now: datetime) -> dict[str, Any]:
        return _renamed(super().row(now), "ends_at")


class MarketplaceTaskIn(_Expiring):
    """`expires_*` is the task's deadline."""

    poster_id: Name
    title: Text500
    expert_id: Name | None = None
    response_seconds: float | None = Field(default=None, ge=0)

    def row(self, now: datetime) -> dict[str, Any]:
        return _renamed(super().row(now), "deadline_at")


class AgentIn(_In):
    name: Text500
    capacity: int = Field(default=3, ge=0, le=1000)
    status: Literal["available", "offline"] = "available"


class ChatIn(_In):
    user_id: Name


class ChatMessageIn(_In):
    chat_id: int = Field(ge=1, le=2**63 - 1)
    sender_id: Name
    body: Annotated[str, Field(min_length=1, max_length=10_000)]


async def _add_to_balance(conn: AsyncConnection, row: dict[str, Any]) -> None:
    bal: Table = models.PointBalance.__table__
    stmt = pg_insert(bal).values(user_id=row["user_id"], balance=row["points"])
    await conn.execute(
        stmt.on_conflict_do_update(
            index_elements=[bal.c.user_id],
            set_={"balance": bal.c.balance + stmt.excluded.balance, "updated_at": func.now()},
        )
    )


async def _touch_chat(conn: AsyncConnection, row: dict[str, Any]) -> None:
    chats: Table = models.Chat.__table__
    await conn.execute(
        update(chats).where(chats.c.id == row["chat_id"]).values(last_message_at=func.now())
    )


@dataclass(frozen=True)
class Example:
    model: type[Any]  # the ORM class: its table
    body: type[_In] | None = None  # None: read-only (rollups, balances)
    after_insert: Callable[[AsyncConnection, dict[str, Any]], Awaitable[None]] | None = None

    @property
    def table(self) -> Table:
        table: Table = self.model.__table__
        return table


class Kind(enum.StrEnum):
    coupons = "coupons"
    invitation_codes = "invitation-codes"
    point_grants = "point-grants"
    point_balances = "point-balances"
    activities = "activities"
    marketplace_tasks = "marketplace-tasks"
    agents = "agents"
    chats = "chats"
    chat_messages = "chat-messages"
    user_statistics = "user-statistics"
    expert_stats = "expert-stats"
    rule_notifications = "rule-notifications"


EXAMPLES: dict[Kind, Example] = {
    Kind.coupons: Example(models.Coupon, CouponIn),
    Kind.invitation_codes: Example(models.InvitationCode, InvitationCodeIn),
    Kind.point_grants: Example(models.PointGrant, PointGrantIn, _add_to_balance),
    Kind.point_balances: Example(models.PointBalance),
    Kind.activities: Example(models.Activity, ActivityIn),
    Kind.marketplace_tasks: Example(models.MarketplaceTask, MarketplaceTaskIn),
    Kind.agents: Example(models.Agent, AgentIn),
    Kind.chats: Example(models.Chat, ChatIn),
    Kind.chat_messages: Example(models.ChatMessage, ChatMessageIn, _touch_chat),
    Kind.user_statistics: Example(models.UserStatistic),
    Kind.expert_stats: Example(models.ExpertStat),
    # the warnings rules wrote (delivered_at: the outbox delivered them)
    Kind.rule_notifications: Example(models.RuleNotification),
}


def _key(example: Example, raw: str) -> Any:
    (col,) = example.table.primary_key.columns
    if isinstance(col.type, Integer):
        if not raw.isdigit() or int(raw) > 2**63 - 1:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "the key is a positive id")
        return int(raw)
    return raw


@router.post(
    "/{kind}",
    status_code=status.HTTP_201_CREATED,
    responses={405: {"description": "This kind is computed by rules, read only."}},
)
async def create_example(
    *, kind: Kind, body: dict[str, Any], state: StateDep, _: UserDep
) -> dict[str, Any]:
    example = EXAMPLES[kind]
    if example.body is None:
        raise HTTPException(
            status.HTTP_405_METHOD_NOT_ALLOWED, f"{kind.value} are computed by rules, read only"
        )
    try:
        parsed = example.body.model_validate(body)
    except ValidationError as exc:
        raise RequestValidationError(exc.errors(include_url=False)) from None
    row = parsed.row(datetime.now(UTC))
    if kind is Kind.chat_messages:
        await _require_chat(state, row["chat_id"])
    try:
        async with state.engine.begin() as conn:
            created = (
                (await conn.execute(insert(example.table).values(row).returning(example.table)))
                .mappings()
                .one()
            )
            if example.after_insert is not None:
                await example.after_insert(conn, row)
    except IntegrityError as exc:  # a duplicate code, a chat deleted meanwhile
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"refused by the database: {exc.orig}"
        ) from None
    return dict(created)


async def _require_chat(state: StateDep, chat_id: int) -> None:
    chats: Table = models.Chat.__table__
    async with state.engine.connect() as conn:
        if await conn.scalar(select(chats.c.id).where(chats.c.id == chat_id)) is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"chat {chat_id} not found")


@router.get("/{kind}")
async def read_examples(
    *,
    kind: Kind,
    state: StateDep,
    _: UserDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> list[dict[str, Any]]:
    table = EXAMPLES[kind].table
    (pk,) = table.primary_key.columns
    async with state.engine.connect() as conn:
        rows = await conn.execute(select(table).order_by(pk.desc()).limit(limit))
        return [dict(r) for r in rows.mappings()]


@router.get("/{kind}/{key}")
async def read_example(
    *,
    kind: Kind,
    key: Annotated[str, Path(min_length=1, max_length=128)],
    state: StateDep,
    _: UserDep,
) -> dict[str, Any]:
    example = EXAMPLES[kind]
    (pk,) = example.table.primary_key.columns
    async with state.engine.connect() as conn:
        row = (
            (await conn.execute(select(example.table).where(pk == _key(example, key))))
            .mappings()
            .first()
        )
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{kind.value} {key} not found")
    return dict(row)
