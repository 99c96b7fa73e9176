"""The example tables of the maintenance rules (report 003's jobs): create and read rows.

    POST /api/v1/examples/<kind>          create (coupons, invitation-codes, point-grants,
                                          activities, marketplace-tasks, agents, chats,
                                          chat-messages)
    GET  /api/v1/examples/<kind>          newest rows (every kind, also point-balances,
                                          user-statistics, expert-stats,
                                          rule-notifications: computed, read-only)
    GET  /api/v1/examples/<kind>/{key}    one row (an id, or a user/expert name)

Each kind has its own operations, so the OpenAPI document gives each its body and key schema.

Deadlines are given as an absolute time (`expires_at`) or seconds from now (`expires_in`).
A point grant adds to its user's balance and a chat message resets its chat's idle timer, each
in the same transaction as the row.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query, status
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import Integer, Table, func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from celery_stack_api.deps import StateDep, UserDep
from celery_stack_core import models
from celery_stack_core.jsontypes import JSON_NUMBER, JsonInt, exactly_one_of, given_once

router = APIRouter(prefix="/api/v1/examples", tags=["examples"])

Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@\-]+$")]
Text500 = Annotated[str, Field(min_length=1, max_length=500)]
# Up to ten years ahead (or a minute back, to create something already due).
Seconds = Annotated[float, Field(ge=-60, le=10 * 365 * 86_400), JSON_NUMBER]


class _In(BaseModel):
    # numbers as JSON's (jsontypes): a JSON `false` is not a capacity (lax mode took it as 0)
    model_config = ConfigDict(extra="forbid")

    def row(self, now: datetime) -> dict[str, Any]:
        return self.model_dump(exclude_none=True)


_DEADLINES = ("expires_at", "expires_in")


class _Expiring(_In):
    """`expires_at` or `expires_in` (seconds from now): exactly one."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=exactly_one_of(*_DEADLINES))
    expires_at: datetime | None = None
    expires_in: Seconds | None = None

    @field_validator("expires_at", mode="before")
    @classmethod
    def _a_time_is_text(cls, value: object) -> object:
        # The schema says an RFC 3339 string; pydantic alone also took 12345 as a Unix time.
        if value is not None and not isinstance(value, str):
            raise ValueError("expires_at is a time as text, e.g. 2030-01-01T00:00:00Z")
        return value

    @model_validator(mode="after")
    def _one_deadline(self) -> _Expiring:
        if not given_once(self, _DEADLINES):
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
    points: JsonInt = Field(gt=0, le=10**12)


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
    response_seconds: Annotated[float, Field(ge=0, allow_inf_nan=False), JSON_NUMBER] | None = None

    def row(self, now: datetime) -> dict[str, Any]:
        return _renamed(super().row(now), "deadline_at")


class AgentIn(_In):
    name: Text500
    capacity: JsonInt = Field(default=3, ge=0, le=1000)
    status: models.AgentStatus = "available"


class ChatIn(_In):
    user_id: Name


class ChatMessageIn(_In):
    chat_id: JsonInt = Field(ge=1, le=2**63 - 1)
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


IdKey = Annotated[int, Path(ge=1, le=2**63 - 1, description="The row's id.")]
NameKey = Annotated[
    str, Path(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:@\-]+$", description="Key.")
]


async def _require_chat(state: StateDep, chat_id: int) -> None:
    chats: Table = models.Chat.__table__
    async with state.engine.connect() as conn:
        if await conn.scalar(select(chats.c.id).where(chats.c.id == chat_id)) is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"chat {chat_id} not found")


def _add_routes(kind: Kind, example: Example) -> None:
    """One operation per kind and verb, each with its own body and key schema: a single
    `/{kind}` route took a free-form body and a string key, so the document called bodies and
    keys valid that the kind then refused (422)."""
    table = example.table
    (pk,) = table.primary_key.columns
    key_type = IdKey if isinstance(pk.type, Integer) else NameKey
    name = kind.name

    async def create(*, body: _In, state: StateDep, _: UserDep) -> dict[str, Any]:
        row = body.row(datetime.now(UTC))
        if kind is Kind.chat_messages:
            await _require_chat(state, row["chat_id"])
        try:
            async with state.engine.begin() as conn:
                created = (
                    (await conn.execute(insert(table).values(row).returning(table)))
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

    async def read_many(
        *, state: StateDep, _: UserDep, limit: Annotated[int, Query(ge=1, le=500)] = 50
    ) -> list[dict[str, Any]]:
        async with state.engine.connect() as conn:
            rows = await conn.execute(select(table).order_by(pk.desc()).limit(limit))
            return [dict(r) for r in rows.mappings()]

    async def read_one(*, key: Any, state: StateDep, _: UserDep) -> dict[str, Any]:
        async with state.engine.connect() as conn:
            row = (await conn.execute(select(table).where(pk == key))).mappings().first()
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"{kind.value} {key} not found")
        return dict(row)

    # The body and key types differ per kind; the handlers' signatures say which to FastAPI.
    create.__annotations__["body"] = example.body
    read_one.__annotations__["key"] = key_type
    path = f"/{kind.value}"
    if example.body is not None:
        router.add_api_route(
            path,
            create,
            methods=["POST"],
            status_code=status.HTTP_201_CREATED,
            name=f"create_{name}",
            responses={
                409: {"description": "A unique value is taken."},
                **({404: {"description": "No such chat."}} if kind is Kind.chat_messages else {}),
            },
        )
    router.add_api_route(path, read_many, methods=["GET"], name=f"read_{name}")
    router.add_api_route(f"{path}/{{key}}", read_one, methods=["GET"], name=f"read_one_{name}")


for _kind, _example in EXAMPLES.items():
    _add_routes(_kind, _example)
