"""Maintenance rules as data (DESIGN "Maintenance"; field report 003): what each rule kind
needs to know about a table, validated by pydantic before anything runs.

    {"kind": "transition", "name": "check-expired-coupons", "every": 300,
     "table": "coupons", "timestamp": "expires_at", "from": ["active"], "to": "expired",
     "set_now": ["expired_at"]}

A rule names tables and columns; `celery_stack_core.rules.bind` checks them against the live
schema at startup. Errors name the field (`MAINTENANCE_RULES[2].batch_size: ...`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from cronsim import CronSim, CronSimError
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Rule names become Celery task names (`maintenance.rule.<name>`) and beat entry names.
NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")]
Scalar = str | int | float | bool
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # any start: the crontab is only parsed


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Guard(_Model):
    """An extra condition on a row, as data: `{"column": "user_id", "op": "not_null"}`."""

    column: Identifier
    op: Literal["eq", "ne", "lt", "le", "gt", "ge", "in", "not_in", "is_null", "not_null"]
    value: Scalar | list[Scalar] | None = None

    @model_validator(mode="after")
    def _value_fits_op(self) -> Guard:
        if self.op in ("is_null", "not_null"):
            if self.value is not None:
                raise ValueError(f"op {self.op!r} takes no value")
        elif self.op in ("in", "not_in"):
            if not isinstance(self.value, list) or not self.value:
                raise ValueError(f"op {self.op!r} needs a non-empty list value")
        elif self.value is None or isinstance(self.value, list):
            raise ValueError(f"op {self.op!r} needs one scalar value")
        return self


class _Rule(_Model):
    """Schedule, limits and batching shared by every kind."""

    name: str = Field(pattern=NAME_PATTERN)
    # Exactly one of `every` (seconds) or `cron` (five fields, UTC).
    every: float | None = Field(default=None, gt=0)
    cron: str | None = None
    # After downtime: skip missed slots, run the newest once, or run all (beat's policies).
    catch_up: Literal["skip", "once", "all"] = "skip"
    enabled: bool = True
    # Rows per batch; each batch is one transaction.
    batch_size: int = Field(default=1000, ge=1, le=50_000)
    # Batches per run at most; the rest waits for the next slot (lag shows it).
    max_batches: int = Field(default=100, ge=1, le=100_000)
    # Celery soft/hard time limits of this rule's task, seconds.
    soft_time_limit: int = Field(default=120, ge=1)
    time_limit: int = Field(default=150, ge=1)
    # Attempts again after a transient database error (deadlock, lost connection), per batch.
    retries: int = Field(default=3, ge=0, le=10)

    @field_validator("cron")
    @classmethod
    def _cron_parses(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                CronSim(value, _EPOCH)
            except CronSimError as exc:
                raise ValueError(f"not a five-field crontab: {exc}") from exc
        return value

    @model_validator(mode="after")
    def _schedule(self) -> _Rule:
        if (self.every is None) == (self.cron is None):
            raise ValueError("set exactly one of 'every' (seconds) or 'cron'")
        if self.soft_time_limit >= self.time_limit:
            raise ValueError("'soft_time_limit' must be below 'time_limit'")
        return self


class _RowRule(_Rule):
    """A rule over the rows of one table, picked by status and a timestamp."""

    table: Identifier
    key: Identifier = "id"
    status_column: Identifier = "status"
    # A row is due `after` seconds past its `timestamp` column (0: at the timestamp).
    timestamp: Identifier
    after: float = Field(default=0.0, ge=0)
    guards: tuple[Guard, ...] = ()


class Transition(_RowRule):
    """Rows in a `from` status whose timestamp (+ after) has passed move to `to`, once."""

    kind: Literal["transition"]
    from_: tuple[str, ...] = Field(alias="from", min_length=1)
    to: str
    # Columns set to the run's time with the transition (e.g. expired_at).
    set_now: tuple[Identifier, ...] = ()

    @model_validator(mode="after")
    def _moves(self) -> Transition:
        if self.to in self.from_:
            raise ValueError(f"'to' ({self.to!r}) must not be one of 'from'")
        return self


class BalanceExpiry(Transition):
    """A transition that also deducts each row's `amount` from its owner's balance, in the
    same transaction."""

    kind: Literal["balance_expiry"]  # type: ignore[assignment]
    amount: Identifier
    owner: Identifier
    balance_table: Identifier
    balance_key: Identifier
    balance_column: Identifier


class WarningRule(_RowRule):
    """One notification per row before its deadline (timestamp + after): sent once the
    deadline is at most `window` seconds away, never after it."""

    kind: Literal["warning"]
    statuses: tuple[str, ...] = Field(min_length=1)
    window: float = Field(gt=0)
    message: str = Field(min_length=1, max_length=500)
    # Column naming who is warned (stored on the notification); none: the row itself.
    recipient: Identifier | None = None

    @model_validator(mode="after")
    def _window_fits(self) -> WarningRule:
        if self.window > self.after:
            raise ValueError("'window' must not exceed 'after' (a warning before the row began)")
        return self


class ColumnRef(_Model):
    table: Identifier
    column: Identifier


class Aggregate(_Model):
    """target.<column> = <function>(<table>.<of>) over the source rows of the key."""

    column: Identifier
    function: Literal["count", "sum", "avg", "min", "max"]
    table: Identifier
    key: Identifier
    of: Identifier | None = None
    guards: tuple[Guard, ...] = ()

    @model_validator(mode="after")
    def _of(self) -> Aggregate:
        if self.function != "count" and self.of is None:
            raise ValueError(f"function {self.function!r} needs 'of' (the column it aggregates)")
        return self


class Rollup(_Rule):
    """Recompute aggregates per key from source tables; one statement per batch of keys; a
    row changes only if a value differs, so a second run changes nothing. Incremental: only
    the keys a trigger logged as changed."""

    kind: Literal["rollup"]
    target: Identifier
    target_key: Identifier
    keys_from: tuple[ColumnRef, ...] = Field(min_length=1)
    aggregates: tuple[Aggregate, ...] = Field(min_length=1)
    # Columns set to the run's time on rows that changed (e.g. updated_at).
    set_now: tuple[Identifier, ...] = ()
    # Recompute only the keys whose source rows changed, read from the change log that the
    # trigger `celery_stack_rollup_mark(<name>, <key column>)` on every source table writes
    # (checked at startup); one full pass first. Off: every run recomputes every key.
    incremental: bool = False


class Assignment(_Rule):
    """Pair waiting rows (chats) with pool rows (agents) that have free capacity, under
    FOR UPDATE SKIP LOCKED on both: a row gets one assignee, an assignee stays within capacity
    (its load is counted from the rows assigned to it, while it is locked)."""

    kind: Literal["assignment"]
    table: Identifier
    key: Identifier = "id"
    status_column: Identifier = "status"
    waiting: str
    assigned: str
    assignee: Identifier
    order_by: Identifier
    set_now: tuple[Identifier, ...] = ()
    guards: tuple[Guard, ...] = ()
    pool: Identifier
    pool_key: Identifier = "id"
    pool_capacity: Identifier
    pool_guards: tuple[Guard, ...] = ()


Rule = Annotated[
    Transition | BalanceExpiry | WarningRule | Rollup | Assignment, Field(discriminator="kind")
]
RULE_KINDS = ("transition", "balance_expiry", "warning", "rollup", "assignment")
