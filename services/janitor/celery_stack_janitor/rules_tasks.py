"""The maintenance rules' Celery tasks: one task per rule, `maintenance.rule.<name>`, sent by
beat with the slot's task id (`beat:<rule>:<due ms>`); plus `maintenance.rule_notify`, which
the outbox sends for each warning.

A task is a thin shell over celery_stack_core.rules.engine.run_task: no retries here (the
engine retries a batch on transient database errors only), no time checks (beat decides
when), no transaction handling (the engine owns each batch's). Registering a task name that
exists already is refused, so one job cannot have two definitions (report 003).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from collections.abc import Callable
from typing import Any

from celery import Celery, Task, signals

from celery_stack_core import aio, connections, outbox
from celery_stack_core.config import Settings
from celery_stack_core.rules import RuleConfigError, load_rules
from celery_stack_core.rules import engine as rules_engine
from celery_stack_core.rules.bind import Bound, bind, check_schema
from celery_stack_core.rules.spec import Rule
from celery_stack_core.rules.statements import NOTIFY_TASK

log = logging.getLogger(__name__)
EXIT_BAD_RULES = 78  # EX_CONFIG


@functools.cache
def _bound(pid: int, rules: tuple[Rule, ...]) -> dict[str, Bound]:
    """The rules bound to the live schema, once per process (tables reflected)."""
    bound = aio.run(bind(connections.engine(), rules))
    return {b.rule.name: b for b in bound}


def _rule_task(app: Celery, rules: tuple[Rule, ...], name: str) -> Callable[..., int]:
    def run(self: Task) -> int:
        bound = _bound(os.getpid(), rules)[name]
        task_id = self.request.id or f"manual:{name}"
        result = aio.run(
            rules_engine.run_task(
                connections.engine(),
                bound,
                task_id,
                publish=outbox.celery_publisher(app),
            )
        )
        return result.rows

    run.__name__ = f"rule_{name.replace('-', '_')}"
    return run


def _refuse_taken(app: Celery, name: str) -> None:
    if name in app.tasks:
        raise RuleConfigError(
            f"task {name!r} is already registered: every task must have one definition"
        )


async def check_rules(settings: Settings, rules: tuple[Rule, ...]) -> None:
    """Bind once at boot: RuleConfigError names each bad field."""
    bound = await check_schema(settings, rules)
    log.info("maintenance rules bound to the schema", extra={"rules": [b.rule.name for b in bound]})


def register(app: Celery, settings: Settings) -> list[Rule]:
    """Register every enabled rule's task and the notification task on `app`; check the rules
    against the live schema when the worker starts (a bad rule stops the boot)."""
    rules = tuple(r for r in load_rules(settings) if r.enabled)
    for rule in rules:
        if rule.time_limit >= settings.celery.visibility_timeout:
            raise RuleConfigError(
                f"rule {rule.name!r}: field 'time_limit' ({rule.time_limit}s) must be below "
                f"CELERY_VISIBILITY_TIMEOUT ({settings.celery.visibility_timeout}s), or a "
                "running rule's message is redelivered to a second worker"
            )
        name = rules_engine.task_name(rule)
        _refuse_taken(app, name)
        app.task(name=name, bind=True, ignore_result=True, shared=False)(
            _rule_task(app, rules, rule.name)
        )
    _refuse_taken(app, NOTIFY_TASK)

    @app.task(name=NOTIFY_TASK, ignore_result=True, shared=False)
    def rule_notify(notification_id: int) -> bool:
        return aio.run(rules_engine.deliver(connections.engine(), int(notification_id)))

    @signals.worker_init.connect(weak=False)
    def _check_rules(**_: Any) -> None:
        try:
            asyncio.run(check_rules(settings, rules))
        except RuleConfigError as exc:
            log.critical("maintenance rules refused; the worker will not start: %s", exc)
            # SystemExit, not the error itself: Celery logs and ignores a receiver's Exception.
            raise SystemExit(EXIT_BAD_RULES) from exc

    return list(rules)
