"""Maintenance rules on real PostgreSQL: each kind does its job once, at the time it is due
(clock passed in), and the rule set is refused at startup when malformed, duplicated, or
naming a table or column the schema lacks."""

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from celery_stack_core.config import Settings
from celery_stack_core.rules import RuleConfigError, load_rules
from celery_stack_core.rules.bind import bind
from celery_stack_core.rules.engine import run_rule, run_task
from celery_stack_core.rules.load import build_rules
from celery_stack_core.rules.statements import pair

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def bound_defaults(engine, **overrides):
    rules = build_rules(defaults=True, overrides=overrides, extra=[])
    return {b.rule.name: b for b in await bind(engine, rules)}


async def q(engine, sql, **params):
    async with engine.connect() as conn:
        return (await conn.execute(text(sql), params)).all()


async def exec_(engine, sql, **params):
    async with engine.begin() as conn:
        await conn.execute(text(sql), params)


async def test_default_rules_bind_to_the_example_schema(clean_db):
    rules = await bound_defaults(clean_db)
    assert len(rules) == 11
    assert {b.rule.kind for b in rules.values()} == {
        "transition",
        "balance_expiry",
        "warning",
        "rollup",
        "assignment",
    }


async def test_transition_moves_due_rows_once(clean_db):
    rules = await bound_defaults(clean_db, **{"check-expired-coupons": {"batch_size": 3}})
    await exec_(
        clean_db,
        "INSERT INTO coupons (code, expires_at) "
        "SELECT 'c' || i, CAST(:t0 AS timestamptz) + i * interval '1 second' FROM generate_series(1, 10) i",
        t0=T0,
    )
    await exec_(clean_db, "UPDATE coupons SET status = 'used' WHERE code = 'c2'")
    coupons = rules["check-expired-coupons"]
    result = await run_rule(clean_db, coupons, now=at(7))
    # c1..c7 are due, c2 was used: 6 rows in batches of 3 (the third batch finds nothing)
    assert (result.rows, result.batches) == (6, 3)
    assert (await run_rule(clean_db, coupons, now=at(7))).rows == 0
    rows = dict(await q(clean_db, "SELECT status, count(*) FROM coupons GROUP BY status"))
    assert rows == {"expired": 6, "used": 1, "active": 3}
    stamped = await q(clean_db, "SELECT count(*) FROM coupons WHERE expired_at = :t", t=at(7))
    assert stamped[0][0] == 6
    # lag: the oldest row still due, seen at a later time
    assert (await run_rule(clean_db, coupons, now=at(20))).rows == 3


async def test_balance_expiry_deducts_once(clean_db):
    rules = await bound_defaults(clean_db)
    points = rules["check-expired-points"]
    await exec_(
        clean_db,
        "INSERT INTO point_balances (user_id, balance) VALUES ('u1', 100), ('u2', 50)",
    )
    await exec_(
        clean_db,
        "INSERT INTO point_grants (user_id, points, expires_at) VALUES "
        "('u1', 30, :a), ('u1', 20, :a), ('u2', 50, :b), ('u3', 5, :a)",
        a=at(1),
        b=at(100),
    )
    assert (await run_rule(clean_db, points, now=at(10))).rows == 3
    assert (await run_rule(clean_db, points, now=at(10))).rows == 0
    balances = dict(await q(clean_db, "SELECT user_id, balance FROM point_balances"))
    assert balances == {"u1": 50, "u2": 50, "u3": -5}


async def test_warning_exactly_once_and_never_after_the_deadline(clean_db):
    """Clock-controlled: a chat idle for `after` seconds ends; the warning is written in the
    `window` before that, once, and never for a chat whose deadline has passed."""
    rules = await bound_defaults(
        clean_db, **{"send-timeout-warnings": {"after": 60, "window": 20, "batch_size": 2}}
    )
    warn = rules["send-timeout-warnings"]
    await exec_(clean_db, "INSERT INTO agents (name) VALUES ('a')")
    await exec_(
        clean_db,
        "INSERT INTO chats (user_id, agent_id, status, last_message_at) "
        "SELECT 'u' || i, 1, 'active', CAST(:t0 AS timestamptz) + i * interval '10 second' FROM generate_series(0, 4) i",
        t0=T0,
    )
    counts = []
    for second in range(0, 130, 5):  # the clock walks; the rule runs every 5 s
        await run_rule(clean_db, warn, now=at(second))
        counts.append((await q(clean_db, "SELECT count(*) FROM rule_notifications"))[0][0])
    assert counts[-1] == 5
    assert counts == sorted(counts)
    rows = await q(
        clean_db,
        "SELECT n.row_key, n.deadline, n.recipient, c.last_message_at FROM rule_notifications n "
        "JOIN chats c ON c.id::text = n.row_key",
    )
    assert len({r.row_key for r in rows}) == 5
    for r in rows:
        assert r.deadline == r.last_message_at + timedelta(seconds=60)
    # first warned at the first run inside its window (deadline - 20 s .. deadline)
    assert counts[:8] == [0, 0, 0, 0, 0, 0, 0, 0]  # until 35 s nothing is within 20 s of 60 s
    assert counts[8] == 1  # at 40 s: chat 0 (deadline 60 s)
    outbox = await q(clean_db, "SELECT task_name, task_id FROM outbox ORDER BY id")
    assert [r.task_name for r in outbox] == ["maintenance.rule_notify"] * 5
    assert len({r.task_id for r in outbox}) == 5


async def test_warning_is_not_written_after_the_deadline(clean_db):
    rules = await bound_defaults(clean_db, **{"send-timeout-warnings": {"after": 60, "window": 20}})
    await exec_(clean_db, "INSERT INTO agents (name) VALUES ('a')")
    await exec_(
        clean_db,
        "INSERT INTO chats (user_id, agent_id, status, last_message_at) VALUES ('u', 1, 'active', :t)",
        t=T0,
    )
    # the runner was down through the whole window: at 61 s the deadline has passed
    assert (await run_rule(clean_db, rules["send-timeout-warnings"], now=at(61))).rows == 0
    ended = await run_rule(clean_db, rules["auto-end-timeout-chats"], now=at(61))
    assert ended.rows == 0  # default after is 10 min
    assert (await q(clean_db, "SELECT count(*) FROM rule_notifications"))[0][0] == 0


async def user_stats(db) -> dict[str, tuple[int, ...]]:
    """user_statistics as {user: (chats, messages, tasks_posted)}."""
    rows = await q(db, "SELECT user_id, chats, messages, tasks_posted FROM user_statistics")
    return {r[0]: tuple(r[1:]) for r in rows}


async def test_rollup_twice_changes_nothing(clean_db):
    rules = await bound_defaults(clean_db, **{"update-all-users-statistics": {"batch_size": 2}})
    stats = rules["update-all-users-statistics"]
    await exec_(clean_db, "INSERT INTO agents (name) VALUES ('a')")
    await exec_(clean_db, "INSERT INTO chats (user_id) VALUES ('u1'), ('u1'), ('u2'), ('u3'); ")
    await exec_(
        clean_db,
        "INSERT INTO chat_messages (chat_id, sender_id, body) VALUES (1, 'u1', 'x'), "
        "(1, 'u1', 'y'), (3, 'u2', 'z'), (3, 'u4', 'w')",
    )
    await exec_(
        clean_db,
        "INSERT INTO marketplace_tasks (poster_id, title, deadline_at) VALUES ('u5', 't', :t)",
        t=T0,
    )
    first = await run_rule(clean_db, stats, now=at(1))
    assert first.rows == 5
    assert first.batches == 3
    got = await user_stats(clean_db)
    assert got == {
        "u1": (2, 2, 0),
        "u2": (1, 1, 0),
        "u3": (1, 0, 0),
        "u4": (0, 1, 0),
        "u5": (0, 0, 1),
    }
    before = await q(
        clean_db, "SELECT user_id, updated_at, xmin::text FROM user_statistics ORDER BY 1"
    )
    assert (await run_rule(clean_db, stats, now=at(2))).rows == 0
    after = await q(
        clean_db, "SELECT user_id, updated_at, xmin::text FROM user_statistics ORDER BY 1"
    )
    assert before == after  # not even rewritten
    await exec_(clean_db, "INSERT INTO chats (user_id) VALUES ('u3')")
    assert (await run_rule(clean_db, stats, now=at(3))).rows == 1


async def test_expert_response_time_rollup(clean_db):
    rules = await bound_defaults(clean_db)
    await exec_(
        clean_db,
        "INSERT INTO marketplace_tasks (poster_id, expert_id, title, deadline_at, response_seconds) "
        "VALUES ('p', 'e1', 't', :t, 10), ('p', 'e1', 't', :t, 30), ('p', 'e1', 't', :t, NULL), "
        "('p', NULL, 't', :t, NULL)",
        t=T0,
    )
    assert (await run_rule(clean_db, rules["update-featured-task-experts-response-time"])).rows == 1
    rows = await q(clean_db, "SELECT expert_id, tasks, avg_response_seconds FROM expert_stats")
    assert [tuple(r) for r in rows] == [("e1", 3, 20.0)]


async def test_assignment_respects_capacity(clean_db):
    rules = await bound_defaults(clean_db)
    queue = rules["process-customer-service-queue"]
    await exec_(
        clean_db,
        "INSERT INTO agents (name, capacity, status) VALUES ('a', 2, 'available'), "
        "('b', 1, 'available'), ('off', 5, 'offline')",
    )
    await exec_(
        clean_db, "INSERT INTO chats (user_id) SELECT 'u' || i FROM generate_series(1, 5) i"
    )
    assert (await run_rule(clean_db, queue, now=at(1))).rows == 3
    assert (await run_rule(clean_db, queue, now=at(2))).rows == 0
    load = dict(
        await q(
            clean_db,
            "SELECT agent_id, count(*) FROM chats WHERE status = 'active' GROUP BY agent_id",
        )
    )
    assert load == {1: 2, 2: 1}
    # a chat ends: its agent has room again
    await exec_(clean_db, "UPDATE chats SET status = 'ended' WHERE agent_id = 2")
    assert (await run_rule(clean_db, queue, now=at(3))).rows == 1


def test_pair_fills_least_loaded_first():
    assert pair([1, 2, 3, 4], [("a", 1), ("b", 2), ("c", 0)]) == [(1, "b"), (2, "a"), (3, "b")]


async def test_a_finished_slot_is_refused_a_crashed_one_resumed(clean_db):
    rules = await bound_defaults(clean_db)
    coupons = rules["check-expired-coupons"]
    assert not (await run_task(clean_db, coupons, "beat:x:1")).refused
    assert (await run_task(clean_db, coupons, "beat:x:1")).refused
    await exec_(
        clean_db,
        "INSERT INTO rule_runs (task_id, rule) VALUES ('beat:x:2', 'check-expired-coupons')",
    )
    assert not (await run_task(clean_db, coupons, "beat:x:2")).refused
    rows = await q(clean_db, "SELECT task_id, status, attempts FROM rule_runs ORDER BY 1")
    assert [tuple(r) for r in rows] == [("beat:x:1", "done", 1), ("beat:x:2", "done", 2)]


# --- refused at startup ----------------------------------------------------------------------

GOOD = {
    "name": "my-expiry",
    "kind": "transition",
    "every": 60,
    "table": "coupons",
    "timestamp": "expires_at",
    "from": ["active"],
    "to": "expired",
}


def test_duplicate_rule_names_are_refused():
    with pytest.raises(
        RuleConfigError,
        match=r"MAINTENANCE_RULES\[1\]: rule name 'my-expiry' is already defined by MAINTENANCE_RULES\[0\]",
    ):
        build_rules(defaults=False, overrides={}, extra=[GOOD, GOOD])
    dup_default = {**GOOD, "name": "check-expired-coupons"}
    with pytest.raises(RuleConfigError, match="already defined by default rule"):
        build_rules(defaults=True, overrides={}, extra=[dup_default])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"batch_size": 0},
            r"MAINTENANCE_RULES\[0\] \(rule 'my-expiry'\)\.batch_size: .*greater than or equal to 1",
        ),
        ({"every": None}, r"set exactly one of 'every' .* or 'cron'"),
        ({"cron": "0 2 * *"}, r"\.cron: .*five-field crontab"),
        ({"name": "Bad Name"}, r"\.name: String should match pattern"),
        (
            {"kind": "expire"},
            r"\(rule 'my-expiry'\)\.: Input tag 'expire' found using 'kind' does not match|kind",
        ),
        ({"to": "active"}, r"'to' \('active'\) must not be one of 'from'"),
        (
            {"guards": [{"column": "x", "op": "in", "value": 3}]},
            r"guards\.0: .*needs a non-empty list",
        ),
        ({"tabel": "coupons"}, r"\.tabel: Extra inputs are not permitted"),
        (
            {"soft_time_limit": 200, "time_limit": 100},
            r"'soft_time_limit' must be below 'time_limit'",
        ),
        (
            {"from": []},
            r"\.from: List should have at least 1 item|\.from: Tuple should have at least 1 item",
        ),
    ],
)
def test_malformed_rules_name_the_field(change, message):
    raw = {k: v for k, v in {**GOOD, **change}.items() if v is not None}
    with pytest.raises(RuleConfigError, match=message):
        build_rules(defaults=False, overrides={}, extra=[raw])


ROLLUP = {
    "name": "my-rollup",
    "kind": "rollup",
    "every": 60,
    "target": "user_statistics",
    "target_key": "user_id",
    "keys_from": [{"table": "chats", "column": "user_id"}],
    "aggregates": [{"column": "chats", "function": "count", "table": "chats", "key": "user_id"}],
}
WARNING = {
    "name": "my-warning",
    "kind": "warning",
    "every": 30,
    "table": "chats",
    "timestamp": "last_message_at",
    "after": 600,
    "window": 120,
    "statuses": ["active"],
    "message": "ends soon",
}


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (
            {**ROLLUP, "aggregates": [{**ROLLUP["aggregates"][0], "function": "sum"}]},
            r"\(rule 'my-rollup'\)\.aggregates\.0: .*function 'sum' needs 'of'",
        ),
        (
            {**ROLLUP, "keys_from": [{"table": "chats"}]},
            r"\(rule 'my-rollup'\)\.keys_from\.0\.column: Field required",
        ),
        ({**ROLLUP, "incremental": "sometimes"}, r"\(rule 'my-rollup'\)\.incremental: "),
        ({**WARNING, "window": 900}, r"'window' must not exceed 'after'"),
        ({**WARNING, "message": ""}, r"\(rule 'my-warning'\)\.message: "),
    ],
)
def test_malformed_rules_of_each_kind_name_the_field(raw, message):
    with pytest.raises(RuleConfigError, match=message):
        build_rules(defaults=False, overrides={}, extra=[raw])


def test_overrides_of_unknown_rules_are_refused():
    with pytest.raises(RuleConfigError, match="do not exist: \\['nope'\\]"):
        load_rules(Settings(MAINTENANCE_RULE_OVERRIDES={"nope": {"every": 1}}))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"table": "coupon"}, "rule 'my-expiry': field 'table': table 'coupon' does not exist"),
        (
            {"timestamp": "expires"},
            "field 'timestamp': table 'coupons' has no column 'expires' \\(it has: id, code",
        ),
        ({"timestamp": "code"}, "field 'timestamp': column coupons.code is TEXT, not a timestamp"),
        ({"set_now": ["code"]}, r"field 'set_now\[0\]': column coupons.code is TEXT, not a"),
        (
            {"guards": [{"column": "nope", "op": "is_null"}]},
            "field 'guards\\[0\\].column': table 'coupons' has no column 'nope'",
        ),
    ],
)
async def test_rules_naming_what_the_schema_lacks_are_refused_at_bind(clean_db, change, message):
    rules = build_rules(defaults=False, overrides={}, extra=[{**GOOD, **change}])
    with pytest.raises(RuleConfigError, match=message):
        await bind(clean_db, rules)


async def test_balance_key_must_be_unique(clean_db):
    rule = {
        **GOOD,
        "kind": "balance_expiry",
        "table": "point_grants",
        "amount": "points",
        "owner": "user_id",
        "balance_table": "point_grants",
        "balance_key": "user_id",
        "balance_column": "points",
    }
    with pytest.raises(
        RuleConfigError,
        match=r"field 'balance_key': point_grants\.user_id must be a primary or unique key",
    ):
        await bind(clean_db, build_rules(defaults=False, overrides={}, extra=[rule]))


async def test_only_transient_errors_are_retried(clean_db, monkeypatch):
    from sqlalchemy.exc import IntegrityError, OperationalError

    from celery_stack_core.rules import engine as rules_engine

    rules = await bound_defaults(clean_db, **{"check-expired-coupons": {"retries": 2}})
    coupons = rules["check-expired-coupons"]
    real = rules_engine.KINDS["transition"]
    calls = []

    def failing(exc, times):
        async def batch(conn, bound, now, cursor):
            calls.append(exc.__class__.__name__)
            if len(calls) <= times:
                raise exc
            return await real(conn, bound, now, cursor)

        return batch

    lost = OperationalError("UPDATE coupons", {}, ConnectionResetError("connection lost"))
    monkeypatch.setitem(rules_engine.KINDS, "transition", failing(lost, 2))
    assert (await run_rule(clean_db, coupons, now=at(1))).batches == 1
    assert calls == ["OperationalError"] * 3  # two failures, then the batch ran

    calls.clear()
    broken = IntegrityError("UPDATE coupons", {}, ValueError("check constraint"))
    monkeypatch.setitem(rules_engine.KINDS, "transition", failing(broken, 1))
    with pytest.raises(IntegrityError):
        await run_rule(clean_db, coupons, now=at(1))
    assert calls == ["IntegrityError"]  # not retried


# --- incremental rollups ---------------------------------------------------------------------


async def test_incremental_rollup_recomputes_only_the_changed_keys(clean_db):
    """After one full pass, a run recomputes only the keys the triggers logged: a target row
    no source change points at is not even read (a value planted there survives), a key whose
    rows all left gets zeros, and running twice changes nothing."""
    from celery_stack_core.rules.engine import measure_lag

    rules = await bound_defaults(clean_db, **{"update-all-users-statistics": {"batch_size": 2}})
    stats = rules["update-all-users-statistics"]
    assert stats.rule.incremental
    await exec_(clean_db, "INSERT INTO agents (name) VALUES ('a')")
    await exec_(clean_db, "INSERT INTO chats (user_id) VALUES ('u1'), ('u1'), ('u2')")
    await exec_(
        clean_db,
        "INSERT INTO chat_messages (chat_id, sender_id, body) VALUES (1, 'u1', 'x'), (3, 'u4', 'w')",
    )
    await exec_(
        clean_db,
        "INSERT INTO marketplace_tasks (poster_id, title, deadline_at) VALUES ('u5', 't', :t)",
        t=T0,
    )
    first = await run_rule(clean_db, stats, now=at(1))  # the full pass
    assert first.rows == 4
    assert (await q(clean_db, "SELECT rule FROM rollup_state"))[0][0] == stats.rule.name
    # the changes logged before (and during) the full pass: recomputed, nothing differs
    assert (await run_rule(clean_db, stats, now=at(2))).rows == 0
    assert (await q(clean_db, "SELECT count(*) FROM rollup_changes"))[0][0] == 0

    # a planted value on a key nothing changes: an incremental run does not look at it
    await exec_(clean_db, "UPDATE user_statistics SET chats = 99 WHERE user_id = 'u1'")
    await exec_(clean_db, "INSERT INTO chats (user_id) VALUES ('u3')")  # u3: new key
    await exec_(clean_db, "DELETE FROM chat_messages WHERE sender_id = 'u4'")  # u4: no rows left
    await exec_(clean_db, "UPDATE chats SET user_id = 'u7' WHERE user_id = 'u2'")  # u2 -> u7
    await exec_(clean_db, "UPDATE chats SET status = 'ended' WHERE user_id = 'u3'")  # not logged
    lag = await measure_lag(clean_db, stats, datetime.now(UTC) + timedelta(seconds=60))
    assert lag >= 60  # the oldest change not yet rolled up
    third = await run_rule(clean_db, stats, now=at(3))
    assert third.rows == 4  # u2, u3, u4, u7
    assert third.lag == 0
    got = await user_stats(clean_db)
    assert got == {
        "u1": (99, 1, 0),  # not recomputed: no source row of u1 changed
        "u2": (0, 0, 0),
        "u3": (1, 0, 0),
        "u4": (0, 0, 0),
        "u5": (0, 0, 1),
        "u7": (1, 0, 0),
    }
    before = await q(clean_db, "SELECT user_id, xmin::text FROM user_statistics ORDER BY 1")
    assert (await run_rule(clean_db, stats, now=at(4))).rows == 0
    after = await q(clean_db, "SELECT user_id, xmin::text FROM user_statistics ORDER BY 1")
    assert before == after

    # deleting the rule's state asks for a full pass: it repairs u1
    await exec_(clean_db, "DELETE FROM rollup_state")
    assert (await run_rule(clean_db, stats, now=at(5))).rows == 1
    assert (await q(clean_db, "SELECT chats FROM user_statistics WHERE user_id = 'u1'"))[0][0] == 2


async def test_incremental_expert_rollup_follows_responses(clean_db):
    rules = await bound_defaults(clean_db)
    experts = rules["update-featured-task-experts-response-time"]
    await exec_(
        clean_db,
        "INSERT INTO marketplace_tasks (poster_id, expert_id, title, deadline_at, response_seconds) "
        "VALUES ('p', 'e1', 't', :t, 10), ('p', 'e1', 't', :t, NULL), ('p', 'e2', 't', :t, 5)",
        t=T0,
    )
    assert (await run_rule(clean_db, experts, now=at(1))).rows == 2  # the full pass
    await exec_(clean_db, "DELETE FROM rollup_changes")  # the inserts' (both rules)
    await exec_(clean_db, "UPDATE marketplace_tasks SET response_seconds = 30 WHERE id = 2")
    await exec_(clean_db, "UPDATE marketplace_tasks SET expert_id = 'e3' WHERE id = 3")
    # the user statistics rule logs nothing for these columns
    logged = await q(clean_db, "SELECT DISTINCT rule, key FROM rollup_changes ORDER BY 2")
    assert [tuple(r) for r in logged] == [
        ("update-featured-task-experts-response-time", "e1"),
        ("update-featured-task-experts-response-time", "e2"),
        ("update-featured-task-experts-response-time", "e3"),
    ]
    assert (await run_rule(clean_db, experts, now=at(2))).rows == 3
    rows = await q(clean_db, "SELECT expert_id, tasks, avg_response_seconds FROM expert_stats")
    assert sorted(tuple(r) for r in rows) == [("e1", 2, 20.0), ("e2", 0, None), ("e3", 1, 5.0)]
    assert (await run_rule(clean_db, experts, now=at(3))).rows == 0


MINE_ROLLUP = {
    "name": "coupons-per-user",
    "kind": "rollup",
    "every": 60,
    "target": "user_statistics",
    "target_key": "user_id",
    "keys_from": [{"table": "coupons", "column": "user_id"}],
    "aggregates": [
        {
            "column": "tasks_posted",
            "function": "count",
            "table": "coupons",
            "key": "user_id",
            "guards": [{"column": "status", "op": "eq", "value": "active"}],
        }
    ],
    "incremental": True,
}


async def test_an_incremental_rollup_without_its_trigger_is_refused_at_bind(clean_db):
    """The boot error names the field and prints the trigger to create; once created (with
    the columns the aggregates read), the rule binds and runs incrementally."""
    rules = build_rules(defaults=False, overrides={}, extra=[MINE_ROLLUP])
    with pytest.raises(RuleConfigError) as refused:
        await bind(clean_db, rules)
    message = str(refused.value)
    assert message.startswith(
        "rule 'coupons-per-user': field 'incremental': no trigger on 'coupons' logs changes "
        "of 'user_id' for this rule"
    )
    create = message.split("create it: ")[1]
    try:
        # a trigger that misses a column the guard reads is not enough
        await exec_(clean_db, create.replace("OF status, user_id", "OF user_id"))
        with pytest.raises(RuleConfigError, match="field 'incremental'"):
            await bind(clean_db, rules)
        await exec_(clean_db, 'DROP TRIGGER "rollup_coupons-per-user" ON coupons')
        await exec_(clean_db, create)
        (mine,) = await bind(clean_db, rules)
        await exec_(
            clean_db,
            "INSERT INTO coupons (code, user_id, expires_at) VALUES ('a', 'u1', :t), ('b', 'u1', :t)",
            t=T0,
        )
        assert (await run_rule(clean_db, mine, now=at(1))).rows == 1  # full pass
        await exec_(clean_db, "UPDATE coupons SET status = 'used' WHERE code = 'a'")
        assert (await run_rule(clean_db, mine, now=at(2))).rows == 1
        got = await q(clean_db, "SELECT tasks_posted FROM user_statistics WHERE user_id = 'u1'")
        assert got[0][0] == 1
    finally:
        await exec_(clean_db, 'DROP TRIGGER IF EXISTS "rollup_coupons-per-user" ON coupons')


async def test_a_rollups_batches_never_overlap(clean_db):
    """Two runners of one rollup take turns per batch (an advisory lock in the batch's
    transaction). Overlapping, the one with the older snapshot could write a key last, and
    an incremental rule would not look at that key again until it changes."""
    import asyncio

    from celery_stack_core.hooks import HOOKS

    rules = await bound_defaults(clean_db)
    stats = rules["update-all-users-statistics"]
    await run_rule(clean_db, stats, now=at(0))  # the full pass: from now on incremental
    held, release = asyncio.Event(), asyncio.Event()

    async def hold_first(step, rule, rows):
        if not held.is_set():
            held.set()
            await release.wait()

    with HOOKS.installed("rules", hold_first):
        first = asyncio.create_task(run_rule(clean_db, stats, now=at(1)))
        await asyncio.wait_for(held.wait(), 10)
        second = asyncio.create_task(run_rule(clean_db, stats, now=at(1)))
        await asyncio.sleep(0.5)
        assert not second.done()  # waits for the first batch's COMMIT
        release.set()
        await asyncio.wait_for(asyncio.gather(first, second), 10)


async def test_a_run_exports_rows_batches_duration_and_lag(clean_db):
    """Metrics of a run: rows changed, batches, one duration observation, and the lag (age
    of the oldest row still due when the run stops at max_batches)."""
    from prometheus_client import REGISTRY

    name = "check-expired-coupons"
    rules = await bound_defaults(clean_db, **{name: {"batch_size": 3, "max_batches": 1}})
    await exec_(
        clean_db,
        "INSERT INTO coupons (code, expires_at) "
        "SELECT 'c' || i, CAST(:t0 AS timestamptz) + i * interval '1 second' FROM generate_series(1, 6) i",
        t0=T0,
    )

    def sample(metric):
        return REGISTRY.get_sample_value(metric, {"rule": name}) or 0.0

    before = {
        m: sample(m)
        for m in (
            "celery_stack_rule_rows_total",
            "celery_stack_rule_batches_total",
            "celery_stack_rule_duration_seconds_count",
        )
    }
    result = await run_rule(clean_db, rules[name], now=at(10))
    assert (result.rows, result.batches) == (3, 1)
    assert result.lag == 6.0  # c4 was due at 4 s and is still active at 10 s
    assert sample("celery_stack_rule_rows_total") - before["celery_stack_rule_rows_total"] == 3
    assert (
        sample("celery_stack_rule_batches_total") - before["celery_stack_rule_batches_total"] == 1
    )
    count = "celery_stack_rule_duration_seconds_count"
    assert sample(count) - before[count] == 1
    assert sample("celery_stack_rule_lag_seconds") == 6.0
    await run_rule(clean_db, rules[name], now=at(10))
    assert sample("celery_stack_rule_lag_seconds") == 0.0  # caught up
