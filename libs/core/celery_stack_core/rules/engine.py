"""Running a rule: batches until the work is done or `max_batches`, each batch its own
transaction, retried only on transient database errors; the run recorded by its task id.

    claim(task id) -> [BEGIN; batch; COMMIT; publish its notifications] x N -> lag -> finish

There is no commit inside a job and no rollback outside it (report 003): the engine owns each
transaction; a failed batch rolls back by itself and the ones before it stay committed, which
is safe because every batch moves rows out of the set it picks from. No time checks either:
beat decides when a rule runs; the rule decides only which rows are due.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Table, func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from celery_stack_core import metrics, outbox
from celery_stack_core.hooks import HOOKS
from celery_stack_core.models import RULE_RUN_STATUSES, RuleRun
from celery_stack_core.retry import with_retry
from celery_stack_core.rules import statements
from celery_stack_core.rules.bind import Bound
from celery_stack_core.rules.spec import Rule, Transition

log = logging.getLogger(__name__)
RUNS: Table = RuleRun.__table__
RUNNING, DONE, FAILED = RULE_RUN_STATUSES

BatchFn = Callable[[AsyncConnection, Bound, datetime, Any], Awaitable[statements.Batch]]
KINDS: dict[str, BatchFn] = {
    "transition": statements.transition,
    "balance_expiry": statements.balance_expiry,
    "warning": statements.warning,
    "rollup": statements.rollup,
    "assignment": statements.assignment,
}


def task_name(rule: Rule) -> str:
    return f"maintenance.rule.{rule.name}"


@dataclass
class RunResult:
    rule: str
    rows: int = 0
    batches: int = 0
    lag: float = 0.0
    refused: bool = False


async def run_batch(
    engine: AsyncEngine, bound: Bound, now: datetime, cursor: Any
) -> statements.Batch:
    async with engine.begin() as conn:
        batch = await KINDS[bound.rule.kind](conn, bound, now, cursor)
        # Test seam inside the batch's transaction, after its statement, before COMMIT.
        await HOOKS.reach("rules", "before_commit", bound.rule.name, str(batch.rows))
    return batch


async def measure_lag(engine: AsyncEngine, bound: Bound, now: datetime) -> float:
    stmt = statements.lag_statement(bound, now)
    if stmt is None:
        return 0.0
    async with engine.connect() as conn:
        oldest = await conn.scalar(stmt)
    if oldest is None:
        return 0.0
    rule = bound.rule
    after = rule.after if isinstance(rule, Transition) else 0.0
    return max(0.0, (now - oldest).total_seconds() - after)


async def run_rule(
    engine: AsyncEngine,
    bound: Bound,
    *,
    now: datetime | None = None,
    publish: outbox.Publisher | None = None,
) -> RunResult:
    """All due batches of one rule at `now` (the caller's clock; tests pass their own)."""
    rule = bound.rule
    now = now or datetime.now(UTC)
    result = RunResult(rule.name)
    cursor: Any = None
    started = time.perf_counter()
    for _ in range(rule.max_batches):
        batch = await with_retry(
            lambda c=cursor: run_batch(engine, bound, now, c),
            what=f"rule {rule.name}",
            attempts=rule.retries + 1,
        )
        result.batches += 1
        result.rows += batch.rows
        cursor = batch.cursor
        metrics.RULE_BATCHES.labels(rule.name).inc()
        metrics.RULE_ROWS.labels(rule.name).inc(batch.rows)
        if publish is not None:
            for msg in batch.messages:
                await outbox.publish_now(engine, publish, msg)
        if not batch.full:
            break
    result.lag = await measure_lag(engine, bound, now)
    metrics.RULE_LAG.labels(rule.name).set(result.lag)
    metrics.RULE_DURATION.labels(rule.name).observe(time.perf_counter() - started)
    return result


async def claim_run(engine: AsyncEngine, rule: str, task_id: str) -> bool:
    """Record the run; False when this task id already ran to completion (a beat slot sent
    twice). A run that died mid-way is claimed again by its redelivery (attempts + 1)."""
    new = insert(RUNS).values(task_id=task_id, rule=rule)
    stmt = new.on_conflict_do_update(
        index_elements=[RUNS.c.task_id],
        set_={"attempts": RUNS.c.attempts + 1, "status": RUNNING, "started_at": func.now()},
        where=RUNS.c.status != DONE,
    ).returning(RUNS.c.task_id)
    async with engine.begin() as conn:
        return (await conn.execute(stmt)).first() is not None


async def finish_run(
    engine: AsyncEngine, task_id: str, result: RunResult, error: str | None = None
) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            update(RUNS)
            .where(RUNS.c.task_id == task_id)
            .values(
                status=FAILED if error else DONE,
                rows=RUNS.c.rows + result.rows,
                batches=RUNS.c.batches + result.batches,
                error=error,
                finished_at=func.now(),
            )
        )


async def run_task(
    engine: AsyncEngine,
    bound: Bound,
    task_id: str,
    *,
    publish: outbox.Publisher | None = None,
    now: datetime | None = None,
) -> RunResult:
    """What a rule's Celery task does: claim the task id, run, record the outcome."""
    rule = bound.rule
    if not await claim_run(engine, rule.name, task_id):
        metrics.TASK_DUPLICATES_REFUSED.labels(task_name(rule)).inc()
        log.info("rule run already done", extra={"rule": rule.name, "task_id": task_id})
        return RunResult(rule.name, refused=True)
    try:
        result = await run_rule(engine, bound, now=now, publish=publish)
    except Exception as exc:
        metrics.RULE_FAILURES.labels(rule.name).inc()
        log.exception("rule run failed", extra={"rule": rule.name, "task_id": task_id})
        await finish_run(engine, task_id, RunResult(rule.name), error=repr(exc)[:500])
        raise
    await finish_run(engine, task_id, result)
    # A run that changed nothing is DEBUG: the worker's minute summary counts it (logsummary).
    log.log(
        logging.INFO if result.rows else logging.DEBUG,
        "rule run done",
        extra={
            "rule": rule.name,
            "rows": result.rows,
            "batches": result.batches,
            "lag": result.lag,
        },
    )
    return result


async def last_runs(engine: AsyncEngine) -> dict[str, dict[str, Any]]:
    """The newest run of each rule, for GET /api/v1/maintenance/rules."""
    stmt = select(RUNS).distinct(RUNS.c.rule).order_by(RUNS.c.rule, RUNS.c.started_at.desc())
    async with engine.connect() as conn:
        rows = (await conn.execute(stmt)).mappings().all()
    return {r["rule"]: dict(r) for r in rows}


NOTIFICATIONS: Table = statements.NOTIFICATIONS


async def deliver(engine: AsyncEngine, notification_id: int) -> bool:
    """Deliver one warning (here: mark it delivered and log it; a real deployment's task
    would call its push or mail service first). Idempotent: the outbox sends at least once."""
    stmt = (
        update(NOTIFICATIONS)
        .where(NOTIFICATIONS.c.id == notification_id, NOTIFICATIONS.c.delivered_at.is_(None))
        .values(delivered_at=func.now())
        .returning(NOTIFICATIONS.c.rule, NOTIFICATIONS.c.row_key, NOTIFICATIONS.c.recipient)
    )
    async with engine.begin() as conn:
        row = (await conn.execute(stmt)).first()
    if row is None:
        return False  # delivered before (a resend) or gone
    log.info(
        "rule notification delivered",
        extra={"rule": row.rule, "row_key": row.row_key, "recipient": row.recipient},
    )
    return True
