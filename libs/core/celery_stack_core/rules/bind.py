"""Rules meet the live schema: the tables a rule names are reflected at startup and every
table and column it uses is checked, so a typo is an error at boot that names the rule and
the field, not a failed job at 3 a.m."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import Column, DateTime, MetaData, Table, UniqueConstraint, inspect
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from celery_stack_core.rules.load import RuleConfigError
from celery_stack_core.rules.spec import (
    Assignment,
    BalanceExpiry,
    Guard,
    Rollup,
    Rule,
    Transition,
    WarningRule,
)

# (field path, table, column or None for the table itself)
Need = tuple[str, str, str | None]


@dataclass(frozen=True)
class Bound:
    """A rule with the reflected tables it works on."""

    rule: Rule
    tables: dict[str, Table]

    def t(self, name: str) -> Table:
        return self.tables[name]


def _guards(prefix: str, table: str, guards: Sequence[Guard]) -> Iterator[Need]:
    for i, g in enumerate(guards):
        yield f"{prefix}[{i}].column", table, g.column


def _cols(prefix: str, table: str, cols: Sequence[str]) -> Iterator[Need]:
    for i, c in enumerate(cols):
        yield f"{prefix}[{i}]", table, c


def _row_needs(rule: Transition | WarningRule) -> Iterator[Need]:
    t = rule.table
    yield "table", t, None
    for f in ("key", "status_column", "timestamp"):
        yield f, t, getattr(rule, f)
    yield from _guards("guards", t, rule.guards)
    if isinstance(rule, Transition):
        yield from _cols("set_now", t, rule.set_now)
    if isinstance(rule, BalanceExpiry):
        yield "amount", t, rule.amount
        yield "owner", t, rule.owner
        yield "balance_table", rule.balance_table, None
        yield "balance_key", rule.balance_table, rule.balance_key
        yield "balance_column", rule.balance_table, rule.balance_column
    if isinstance(rule, WarningRule) and rule.recipient:
        yield "recipient", t, rule.recipient


def _rollup_needs(rule: Rollup) -> Iterator[Need]:
    yield "target", rule.target, None
    yield "target_key", rule.target, rule.target_key
    yield from _cols("set_now", rule.target, rule.set_now)
    for i, ref in enumerate(rule.keys_from):
        yield f"keys_from[{i}].table", ref.table, None
        yield f"keys_from[{i}].column", ref.table, ref.column
    for i, agg in enumerate(rule.aggregates):
        p = f"aggregates[{i}]"
        yield f"{p}.column", rule.target, agg.column
        yield f"{p}.table", agg.table, None
        yield f"{p}.key", agg.table, agg.key
        if agg.of:
            yield f"{p}.of", agg.table, agg.of
        yield from _guards(f"{p}.guards", agg.table, agg.guards)


def _assignment_needs(rule: Assignment) -> Iterator[Need]:
    t = rule.table
    yield "table", t, None
    for f in ("key", "status_column", "assignee", "order_by"):
        yield f, t, getattr(rule, f)
    yield from _cols("set_now", t, rule.set_now)
    yield from _guards("guards", t, rule.guards)
    yield "pool", rule.pool, None
    yield "pool_key", rule.pool, rule.pool_key
    yield "pool_capacity", rule.pool, rule.pool_capacity
    yield from _guards("pool_guards", rule.pool, rule.pool_guards)


def needs(rule: Rule) -> list[Need]:
    if isinstance(rule, Rollup):
        return list(_rollup_needs(rule))
    if isinstance(rule, Assignment):
        return list(_assignment_needs(rule))
    return list(_row_needs(rule))


def _unique(table: Table, column: str) -> bool:
    """Whether `column` alone is a primary or unique key (an ON CONFLICT target)."""
    keys = [[c.name for c in table.primary_key.columns]]
    keys += [
        [c.name for c in u.columns] for u in table.constraints if isinstance(u, UniqueConstraint)
    ]
    keys += [[c.name for c in ix.columns] for ix in table.indexes if ix.unique]
    return [column] in keys


def _set_now_checks(rule: Rule, tables: dict[str, Table]) -> Iterator[str]:
    set_now: tuple[str, ...] = getattr(rule, "set_now", ())
    table = rule.target if isinstance(rule, Rollup) else getattr(rule, "table", "")
    for i, name in enumerate(set_now):
        col = tables[table].c[name]
        if not isinstance(col.type, DateTime):
            yield f"field 'set_now[{i}]': column {table}.{name} is {col.type}, not a timestamp"


def _type_checks(rule: Rule, tables: dict[str, Table]) -> Iterator[str]:
    yield from _set_now_checks(rule, tables)
    if isinstance(rule, Transition | WarningRule):
        col: Column[object] = tables[rule.table].c[rule.timestamp]
        if not isinstance(col.type, DateTime):
            where = f"{rule.table}.{col.name}"
            yield f"field 'timestamp': column {where} is {col.type}, not a timestamp"
    if isinstance(rule, BalanceExpiry) and not _unique(
        tables[rule.balance_table], rule.balance_key
    ):
        yield (
            f"field 'balance_key': {rule.balance_table}.{rule.balance_key} must be a primary "
            "or unique key (one balance row per owner)"
        )
    if isinstance(rule, Rollup) and not _unique(tables[rule.target], rule.target_key):
        yield (
            f"field 'target_key': {rule.target}.{rule.target_key} must be a primary or unique "
            "key (one aggregate row per key)"
        )


def _check(rule: Rule, tables: dict[str, Table], existing: set[str]) -> list[str]:
    problems = []
    for field, table, column in needs(rule):
        if table not in existing:
            problems.append(f"field {field!r}: table {table!r} does not exist")
        elif column is not None and column not in tables[table].c:
            cols = ", ".join(tables[table].c.keys())
            problems.append(
                f"field {field!r}: table {table!r} has no column {column!r} (it has: {cols})"
            )
    if not problems:
        problems.extend(_type_checks(rule, tables))
    return [f"rule {rule.name!r}: {p}" for p in problems]


def bind_sync(conn: Connection, rules: Sequence[Rule]) -> list[Bound]:
    existing = set(inspect(conn).get_table_names())
    wanted = {t for r in rules for _, t, _ in needs(r)}
    meta = MetaData()
    meta.reflect(conn, only=sorted(wanted & existing))
    problems = [p for r in rules for p in _check(r, dict(meta.tables), existing)]
    if problems:
        raise RuleConfigError("; ".join(problems))
    bound = []
    for rule in rules:
        names = {t for _, t, _ in needs(rule)}
        bound.append(Bound(rule, {n: meta.tables[n] for n in names}))
    return bound


async def bind(engine: AsyncEngine, rules: Sequence[Rule]) -> list[Bound]:
    """Reflect what the rules name and check it; RuleConfigError lists every problem."""
    async with engine.connect() as conn:
        return await conn.run_sync(bind_sync, rules)
