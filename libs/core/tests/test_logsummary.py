"""At idle, periodic tasks that did nothing logged ~190 INFO lines a minute: now DEBUG, with
one summary line a minute. Records are made with Celery's own loggers and formats."""

import io
import json
import logging

import pytest
from celery.app.trace import LOG_RECEIVED, LOG_SUCCESS

from celery_stack_core import logs, logsummary


@pytest.fixture
def captured(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(logs.sys, "stdout", out)
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    logs.configure_logging("test", "INFO")
    now = [0.0]
    [handler] = root.handlers
    [quiet] = [f for f in handler.filters if isinstance(f, logsummary.QuietNoops)]
    quiet.clock = lambda: now[0]
    quiet.since = 0.0
    yield out, now
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


def _run(name, result):
    ctx = {"name": name, "id": "abc", "args": "()", "kwargs": "{}"}
    logging.getLogger("celery.worker.strategy").info(LOG_RECEIVED, ctx, extra={"data": ctx})
    ctx = {**ctx, "return_value": repr(result), "runtime": 0.001}
    logging.getLogger("celery.app.trace").info(LOG_SUCCESS, ctx, extra={"data": ctx})


def _lines(out):
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_noop_runs_are_quiet_and_summarized_each_minute(captured):
    out, now = captured
    for _ in range(20):
        _run("counters.flush", {"batches": 0, "rows": 0})
        _run("counters.drain", 0)
    noise = [line for line in _lines(out) if "counters." in line["message"]]
    assert len(noise) <= 2  # at most the first "received" of each, before a run showed no-op
    _run("counters.flush", {"batches": 1, "rows": 7})  # real work logs as before
    assert "succeeded" in _lines(out)[-1]["message"]
    now[0] = 61.0
    _run("counters.drain", None)
    [summary] = [line for line in _lines(out) if line["logger"] == logsummary.SUMMARY_LOGGER]
    assert "counters.flush x20" in summary["message"] and "counters.drain x20" in summary["message"]


@pytest.mark.parametrize(
    ("value", "noop"),
    [(None, True), (0, True), ({}, True), ({"a": 0, "b": [0, {}]}, True), (1, False),
     ({"rows": 3}, False), ("<Thing object>", False), ([0, 1], False)],
)  # fmt: skip
def test_what_counts_as_nothing_done(value, noop):
    rendered = value if isinstance(value, str) and value.startswith("<") else repr(value)
    assert logsummary.is_noop(rendered) is noop


def test_a_beat_sent_tasks_received_line_is_debug_in_a_process_that_never_saw_its_result(
    captured,
):
    """A prefork worker logs "received" in its main process and the result in a child: the main
    process never learned the runs were no-ops, and every beat send printed a line (~240 lines a
    minute from `make run` at idle). A task sent by anything else keeps its line."""
    out, _ = captured
    received = logging.getLogger("celery.worker.strategy")
    for tid in ("beat:check-expired-coupons:1795970178000", "scan-1234:1"):
        ctx = {"name": "maintenance.rule.check-expired-coupons", "id": tid}
        received.info(LOG_RECEIVED, ctx, extra={"data": ctx})
    assert [line["data"]["id"] for line in _lines(out)] == ["scan-1234:1"]


async def test_a_rule_run_that_changed_nothing_logs_at_debug(caplog, settings, clean_db):
    from celery_stack_core.rules import load_rules
    from celery_stack_core.rules.bind import bind
    from celery_stack_core.rules.engine import run_task

    (coupons,) = [
        b
        for b in await bind(clean_db, load_rules(settings))
        if b.rule.name == "check-expired-coupons"
    ]
    with caplog.at_level(logging.DEBUG, logger="celery_stack_core.rules.engine"):
        await run_task(clean_db, coupons, "beat:check-expired-coupons:1")
    [done] = [r for r in caplog.records if r.getMessage() == "rule run done"]
    assert done.levelno == logging.DEBUG
