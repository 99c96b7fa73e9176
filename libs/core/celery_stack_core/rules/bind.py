"""Rules meet the live schema: the tables a rule names are reflected at startup and every
table and column it uses is checked, so a typo is an error at boot that names the rule and
the field, not a failed job at 3 a.m."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from sqlalchemy import Column, DateTime, MetaData, Table, UniqueConstraint, inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from celery_stack_core.config import Settings
from celery_stack_core.db import make_engine
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


@dataclass(frozen=True)
class MarkTrigger:
    """A row trigger calling celery_stack_rollup_mark on a table."""

    name: str
    pairs: frozenset[tuple[str, str]]  # (rule, key column)
    columns: frozenset[str]  # UPDATE OF these; empty: any column
    complete: bool  # AFTER, FOR EACH ROW, on INSERT, DELETE and UPDATE, enabled


# Hand-written: the catalog is the point. tgtype bits: 1 row, 2 before, 4 insert, 8 delete,
# 16 update, 64 instead of; tgargs is the arguments NUL-separated.
_MARK_TRIGGERS = text(
    """
    SELECT c.relname AS tbl, t.tgname AS name, t.tgtype AS type, t.tgenabled AS enabled,
           encode(t.tgargs, 'escape') AS args,
           ARRAY(SELECT a.attname::text FROM pg_attribute a
                 WHERE a.attrelid = t.tgrelid AND a.attnum = ANY(t.tgattr::int2[])) AS columns
    FROM pg_trigger t
    JOIN pg_class c ON c.oid = t.tgrelid
    JOIN pg_proc p ON p.oid = t.tgfoid
    WHERE p.proname = 'celery_stack_rollup_mark' AND NOT t.tgisinternal
      AND pg_table_is_visible(c.oid)
    """
)


def mark_triggers(conn: Connection) -> dict[str, list[MarkTrigger]]:
    out: dict[str, list[MarkTrigger]] = {}
    for r in conn.execute(_MARK_TRIGGERS):
        args = r.args.split("\\000")[:-1]
        pairs = frozenset(zip(args[0::2], args[1::2], strict=False))
        kind = int(r.type)
        complete = kind & 0b11111 == 0b11101 and not kind & 64 and r.enabled != "D"
        out.setdefault(r.tbl, []).append(MarkTrigger(r.name, pairs, frozenset(r.columns), complete))
    return out


def _rollup_sources(rule: Rollup) -> dict[str, tuple[set[str], set[str]]]:
    """Per source table: its key columns, and every column an aggregate reads there."""
    out: dict[str, tuple[set[str], set[str]]] = {}
    for ref in rule.keys_from:
        keys, read = out.setdefault(ref.table, (set(), set()))
        keys.add(ref.column)
        read.add(ref.column)
    for agg in rule.aggregates:
        keys, read = out.setdefault(agg.table, (set(), set()))
        keys.add(agg.key)
        read |= {agg.key, *([agg.of] if agg.of else []), *(g.column for g in agg.guards)}
    return out


def _incremental_checks(rule: Rule, triggers: dict[str, list[MarkTrigger]]) -> Iterator[str]:
    """An incremental rollup needs, on every source table, a trigger that logs each key
    column's changes for this rule on INSERT, DELETE and UPDATE of what the aggregates read."""
    if not isinstance(rule, Rollup) or not rule.incremental:
        return
    for table, (keys, read) in sorted(_rollup_sources(rule).items()):
        for key in sorted(keys):
            if any(
                (rule.name, key) in t.pairs and t.complete and (not t.columns or read <= t.columns)
                for t in triggers.get(table, [])
            ):
                continue
            yield (
                f"field 'incremental': no trigger on {table!r} logs changes of {key!r} for this "
                f"rule (AFTER INSERT OR DELETE OR UPDATE OF {', '.join(sorted(read))}, FOR EACH "
                f'ROW); create it: CREATE TRIGGER "rollup_{rule.name}" AFTER INSERT OR DELETE '
                f"OR UPDATE OF {', '.join(sorted(read))} ON {table} FOR EACH ROW EXECUTE "
                f"FUNCTION celery_stack_rollup_mark('{rule.name}', '{key}')"
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
    if not problems and any(isinstance(r, Rollup) and r.incremental for r in rules):
        triggers = mark_triggers(conn)
        problems = [
            f"rule {r.name!r}: {p}" for r in rules for p in _incremental_checks(r, triggers)
        ]
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


async def check_schema(settings: Settings, rules: Sequence[Rule]) -> list[Bound]:
    """A service's boot check (the API and the maintenance worker): bind once with a
    throwaway engine; RuleConfigError names each bad rule and field."""
    engine = make_engine(settings, pool_size=1)
    try:
        return await bind(engine, rules)
    finally:
        await engine.dispose()
