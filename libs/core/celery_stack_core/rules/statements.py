"""One batch of each rule kind, as SQLAlchemy Core statements on the reflected tables.

Every batch is one transaction (the caller's `engine.begin()`); rows are picked with
`FOR UPDATE SKIP LOCKED` (FOR SHARE for warnings), so concurrent runners split the work and a
row is handled once. The status guard is checked again by the statement that changes the row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Interval,
    Table,
    Text,
    and_,
    bindparam,
    cast,
    delete,
    func,
    literal,
    select,
    union,
    update,
    values,
)
from sqlalchemy import column as sql_column
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from celery_stack_core.celery_app import queue_of
from celery_stack_core.models import Outbox, RollupChange, RollupState, RuleNotification
from celery_stack_core.outbox import OutboxMessage
from celery_stack_core.rules.bind import Bound
from celery_stack_core.rules.spec import (
    Assignment,
    BalanceExpiry,
    Guard,
    Rollup,
    Transition,
    WarningRule,
)
from celery_stack_core.tracing import inject_context

NOTIFY_TASK = "maintenance.rule_notify"
NOTIFICATIONS: Table = RuleNotification.__table__
OUTBOX: Table = Outbox.__table__
CHANGES: Table = RollupChange.__table__
STATE: Table = RollupState.__table__


@dataclass
class Batch:
    rows: int
    full: bool  # the batch was full: there may be more
    cursor: Any = None  # rollup: the last key done
    messages: list[OutboxMessage] = field(default_factory=list)


def guard(table: Table, g: Guard) -> ColumnElement[bool]:
    col = table.c[g.column]
    ops: dict[str, Any] = {
        "eq": lambda: col == g.value,
        "ne": lambda: col != g.value,
        "lt": lambda: col < g.value,
        "le": lambda: col <= g.value,
        "gt": lambda: col > g.value,
        "ge": lambda: col >= g.value,
        "in": lambda: col.in_(g.value),
        "not_in": lambda: col.not_in(g.value),
        "is_null": lambda: col.is_(None),
        "not_null": lambda: col.is_not(None),
    }
    result: ColumnElement[bool] = ops[g.op]()
    return result


def _due(b: Bound, rule: Transition, now: datetime) -> ColumnElement[bool]:
    t = b.t(rule.table)
    return and_(
        t.c[rule.status_column].in_(rule.from_),
        t.c[rule.timestamp] <= now - timedelta(seconds=rule.after),
        *(guard(t, g) for g in rule.guards),
    )


def lag_statement(b: Bound, now: datetime) -> Any:
    """Oldest eligible row's timestamp (+ `after`): how long it has been due; for an
    incremental rollup the oldest change not yet rolled up (None: no lag for this kind)."""
    rule = b.rule
    if isinstance(rule, Transition):
        t = b.t(rule.table)
        return select(func.min(t.c[rule.timestamp])).where(_due(b, rule, now))
    if isinstance(rule, Rollup) and rule.incremental:
        return select(func.min(CHANGES.c.created_at)).where(CHANGES.c.rule == rule.name)
    if isinstance(rule, Assignment):
        t = b.t(rule.table)
        return select(func.min(t.c[rule.order_by])).where(
            t.c[rule.status_column] == rule.waiting, *(guard(t, g) for g in rule.guards)
        )
    return None


def _picked_for_transition(b: Bound, rule: Transition, now: datetime, cols: list[str]) -> Any:
    t = b.t(rule.table)
    return (
        select(*(t.c[c] for c in cols))
        .where(_due(b, rule, now))
        .order_by(t.c[rule.timestamp])
        .limit(rule.batch_size)
        .with_for_update(skip_locked=True)
        .cte("picked")
    )


def _moved(b: Bound, rule: Transition, now: datetime) -> Any:
    t = b.t(rule.table)
    picked = _picked_for_transition(b, rule, now, [rule.key])
    return (
        update(t)
        .where(t.c[rule.key] == picked.c[rule.key], t.c[rule.status_column].in_(rule.from_))
        .values({rule.status_column: rule.to, **dict.fromkeys(rule.set_now, now)})
    )


async def transition(conn: AsyncConnection, b: Bound, now: datetime, cursor: Any) -> Batch:
    rule = b.rule
    assert isinstance(rule, Transition)
    n = int((await conn.execute(_moved(b, rule, now))).rowcount or 0)
    return Batch(n, full=n >= rule.batch_size)


async def balance_expiry(conn: AsyncConnection, b: Bound, now: datetime, cursor: Any) -> Batch:
    """Mark expired and deduct from the owner's balance in ONE statement (so in one
    transaction): a grant leaves `from` exactly when its amount leaves the balance."""
    rule = b.rule
    assert isinstance(rule, BalanceExpiry)
    t, bal = b.t(rule.table), b.t(rule.balance_table)
    expired = (
        _moved(b, rule, now)
        .returning(t.c[rule.owner].label("owner"), t.c[rule.amount].label("amount"))
        .cte("expired")
    )
    per_owner = select(expired.c.owner, -func.sum(expired.c.amount)).group_by(expired.c.owner)
    upsert = insert(bal).from_select([rule.balance_key, rule.balance_column], per_owner)
    deducted = (
        upsert.on_conflict_do_update(
            index_elements=[bal.c[rule.balance_key]],
            set_={
                rule.balance_column: bal.c[rule.balance_column]
                + upsert.excluded[rule.balance_column]
            },
        )
        .returning(bal.c[rule.balance_key])
        .cte("deducted")
    )
    stmt = select(
        select(func.count()).select_from(expired).scalar_subquery(),
        select(func.count()).select_from(deducted).scalar_subquery(),
    )
    n, _ = (await conn.execute(stmt)).one()
    return Batch(int(n), full=int(n) >= rule.batch_size)


async def warning(conn: AsyncConnection, b: Bound, now: datetime, cursor: Any) -> Batch:
    """Insert one notification per row whose deadline is within the window and not past
    (ON CONFLICT DO NOTHING on rule + row), and its outbox message, in one statement."""
    rule = b.rule
    assert isinstance(rule, WarningRule)
    t = b.t(rule.table)
    after = timedelta(seconds=rule.after)
    n = NOTIFICATIONS
    row_key = cast(t.c[rule.key], Text)
    recipient = cast(t.c[rule.recipient], Text) if rule.recipient else literal(None, Text)
    picked = (
        select(
            row_key.label("row_key"),
            recipient.label("recipient"),
            (t.c[rule.timestamp] + bindparam("after", after, Interval())).label("deadline"),
        )
        .where(
            t.c[rule.status_column].in_(rule.statuses),
            t.c[rule.timestamp] > now - after,  # the deadline is still ahead: never after it
            t.c[rule.timestamp] <= now - after + timedelta(seconds=rule.window),
            *(guard(t, g) for g in rule.guards),
            ~select(n.c.id).where(n.c.rule == rule.name, n.c.row_key == row_key).exists(),
        )
        .order_by(t.c[rule.timestamp])
        .limit(rule.batch_size)
        # FOR SHARE: the end rule's UPDATE waits for (or skips) a row being warned, so a
        # warning is never written for a row that ended meanwhile.
        .with_for_update(read=True, skip_locked=True)
        .cte("picked")
    )
    inserted = (
        insert(n)
        .from_select(
            ["rule", "row_key", "recipient", "message", "deadline"],
            select(
                literal(rule.name),
                picked.c.row_key,
                picked.c.recipient,
                literal(rule.message),
                picked.c.deadline,
            ),
        )
        .on_conflict_do_nothing(index_elements=[n.c.rule, n.c.row_key])
        .returning(n.c.id)
        .cte("inserted")
    )
    carrier = json.dumps(inject_context())
    sent = insert(OUTBOX).from_select(
        ["task_name", "task_id", "queue", "args", "trace_context"],
        select(
            literal(NOTIFY_TASK),
            literal("notify-") + cast(inserted.c.id, Text),
            literal(queue_of(NOTIFY_TASK)),
            func.jsonb_build_array(inserted.c.id),
            cast(literal(carrier), JSONB),
        ),
    )
    rows = (
        await conn.execute(
            sent.returning(OUTBOX.c.id, OUTBOX.c.task_id, OUTBOX.c.args, OUTBOX.c.trace_context)
        )
    ).all()
    messages = [
        OutboxMessage(r.id, NOTIFY_TASK, r.task_id, list(r.args), {}, dict(r.trace_context))
        for r in rows
    ]
    return Batch(len(rows), full=len(rows) >= rule.batch_size, messages=messages)


def _rollup_value(b: Bound, agg: Any, key: Any) -> Any:
    src = b.t(agg.table)
    fn = getattr(func, agg.function)
    expr = fn() if agg.function == "count" else fn(src.c[agg.of])
    value = (
        select(expr)
        .where(src.c[agg.key] == key, *(guard(src, g) for g in agg.guards))
        .scalar_subquery()
    )
    return func.coalesce(value, 0) if agg.function in ("count", "sum") else value


def _upsert(b: Bound, rule: Rollup, keys: Any, now: datetime) -> Any:
    """The recomputed aggregates of `keys` (a CTE of `k`), upserted; a row is written only
    where a value differs (IS DISTINCT FROM), so running it again changes nothing."""
    target = b.t(rule.target)
    cols = [a.column for a in rule.aggregates]
    upsert = insert(target).from_select(
        [rule.target_key, *cols],
        select(keys.c.k, *(_rollup_value(b, a, keys.c.k) for a in rule.aggregates)),
    )
    return (
        upsert.on_conflict_do_update(
            index_elements=[target.c[rule.target_key]],
            set_={
                **{c: upsert.excluded[c] for c in cols},
                **dict.fromkeys(rule.set_now, now),
            },
            where=func.row(*(target.c[c] for c in cols)).is_distinct_from(
                func.row(*(upsert.excluded[c] for c in cols))
            ),
        )
        .returning(target.c[rule.target_key])
        .cte("changed")
    )


async def _all_keys(
    conn: AsyncConnection, b: Bound, rule: Rollup, now: datetime, cursor: Any
) -> Batch:
    """The next `batch_size` keys of every source after `cursor`, in key order."""
    sources = [
        select(b.t(ref.table).c[ref.column].label("k")).where(
            b.t(ref.table).c[ref.column].is_not(None)
        )
        for ref in rule.keys_from
    ]
    all_keys = union(*sources).subquery("all_keys") if len(sources) > 1 else sources[0].subquery()
    page = select(all_keys.c.k).distinct()
    if cursor is not None:
        page = page.where(all_keys.c.k > cursor)
    keys = page.order_by(all_keys.c.k).limit(rule.batch_size).cte("keys")
    changed = _upsert(b, rule, keys, now)
    stmt = select(
        select(func.max(keys.c.k)).scalar_subquery(),
        select(func.count()).select_from(keys).scalar_subquery(),
        select(func.count()).select_from(changed).scalar_subquery(),
    )
    last, seen, n = (await conn.execute(stmt)).one()
    return Batch(int(n), full=int(seen) >= rule.batch_size, cursor=last)


async def _changed_keys(conn: AsyncConnection, b: Bound, rule: Rollup, now: datetime) -> Batch:
    """The next `batch_size` keys of the change log: taken out of it and recomputed in ONE
    statement, so one snapshot. A change committed after it stays in the log (next run)."""
    c = CHANGES
    picked = (
        select(c.c.key)
        .where(c.c.rule == rule.name)
        .distinct()
        .order_by(c.c.key)
        .limit(rule.batch_size)
        .cte("picked")
    )
    taken = (
        delete(c)
        .where(c.c.rule == rule.name, c.c.key.in_(select(picked.c.key)))
        .returning(c.c.id)
        .cte("taken")
    )
    key_type = b.t(rule.target).c[rule.target_key].type
    keys = select(cast(picked.c.key, key_type).label("k")).cte("keys")
    changed = _upsert(b, rule, keys, now)
    stmt = select(
        select(func.count()).select_from(keys).scalar_subquery(),
        select(func.count()).select_from(taken).scalar_subquery(),
        select(func.count()).select_from(changed).scalar_subquery(),
    )
    seen, _, n = (await conn.execute(stmt)).one()
    return Batch(int(n), full=int(seen) >= rule.batch_size)


async def rollup(conn: AsyncConnection, b: Bound, now: datetime, cursor: Any) -> Batch:
    """One statement per batch of keys. Every key (`cursor` pages through them), or, for an
    incremental rule whose full pass is done, the keys its change log names.

    A rule's batches take a transaction-level advisory lock first: two runners recomputing
    one key from different snapshots could otherwise leave the older value last, and the
    incremental rule would not look at that key again until it changes."""
    rule = b.rule
    assert isinstance(rule, Rollup)
    await conn.execute(
        select(func.pg_advisory_xact_lock(func.hashtextextended(f"rollup:{rule.name}", 0)))
    )
    if not rule.incremental:
        return await _all_keys(conn, b, rule, now, cursor)
    if await conn.scalar(select(STATE.c.rule).where(STATE.c.rule == rule.name)) is not None:
        return await _changed_keys(conn, b, rule, now)
    batch = await _all_keys(conn, b, rule, now, cursor)
    if not batch.full:  # the full pass is done, in the transaction of its last batch
        await conn.execute(
            insert(STATE).values(rule=rule.name, full_pass_at=now).on_conflict_do_nothing()
        )
    return batch


def pair(waiting: list[Any], free: list[tuple[Any, int]]) -> list[tuple[Any, Any]]:
    """Waiting items in order to the assignees with free slots, least loaded first, round
    robin; never more than an assignee's free slots."""
    slots = {a: n for a, n in free if n > 0}
    out: list[tuple[Any, Any]] = []
    for item in waiting:
        if not slots:
            break
        assignee = max(slots, key=lambda a: slots[a])  # the most free slots left
        out.append((item, assignee))
        slots[assignee] -= 1
        if not slots[assignee]:
            del slots[assignee]
    return out


async def assignment(conn: AsyncConnection, b: Bound, now: datetime, cursor: Any) -> Batch:
    rule = b.rule
    assert isinstance(rule, Assignment)
    t, pool = b.t(rule.table), b.t(rule.pool)
    waiting = (
        await conn.scalars(
            select(t.c[rule.key])
            .where(t.c[rule.status_column] == rule.waiting, *(guard(t, g) for g in rule.guards))
            .order_by(t.c[rule.order_by])
            .limit(rule.batch_size)
            .with_for_update(skip_locked=True)
        )
    ).all()
    if not waiting:
        return Batch(0, full=False)
    # The assignee rows stay locked until COMMIT: their load cannot change under us, and
    # a concurrent runner skips them.
    load = (
        select(func.count())
        .where(
            t.c[rule.assignee] == pool.c[rule.pool_key], t.c[rule.status_column] == rule.assigned
        )
        .scalar_subquery()
    )
    free = (
        await conn.execute(
            select(pool.c[rule.pool_key], pool.c[rule.pool_capacity] - load)
            .where(*(guard(pool, g) for g in rule.pool_guards))
            .order_by(pool.c[rule.pool_key])
            .with_for_update(skip_locked=True, of=pool)
        )
    ).all()
    pairs = pair(list(waiting), [(a, int(n)) for a, n in free])
    if not pairs:
        return Batch(0, full=False)
    v = values(
        sql_column("item", t.c[rule.key].type),
        sql_column("assignee", pool.c[rule.pool_key].type),
        name="v",
    ).data(pairs)
    stmt = (
        update(t)
        .where(t.c[rule.key] == v.c.item, t.c[rule.status_column] == rule.waiting)
        .values(
            {
                rule.status_column: rule.assigned,
                rule.assignee: v.c.assignee,
                **dict.fromkeys(rule.set_now, now),
            }
        )
    )
    n = int((await conn.execute(stmt)).rowcount or 0)
    return Batch(n, full=len(waiting) >= rule.batch_size and n == len(waiting))
