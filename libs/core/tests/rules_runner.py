"""A rule runner process for the concurrency and kill -9 tests.

    python rules_runner.py RULE[,RULE...] ROUNDS [TASK_ID]

Prints "ready" once its rules are bound, then waits for the file RULES_GO_FILE (if set) so
all runners start together; runs each named rule
ROUNDS times (or once as the task TASK_ID), prints {"rule": rows} as JSON. With
RULES_KILL_AT_BATCH=n it SIGKILLs itself inside the n-th batch's transaction, before COMMIT.
"""

import asyncio
import json
import os
import signal
import sys

from celery_stack_core.config import get_settings
from celery_stack_core.db import make_engine
from celery_stack_core.hooks import HOOKS
from celery_stack_core.rules import engine as rules_engine
from celery_stack_core.rules import load_rules
from celery_stack_core.rules.bind import bind


def install_kill_hook(at_batch: int) -> None:
    seen = 0

    def hook(step, rule, rows):
        nonlocal seen
        seen += 1
        if seen == at_batch:
            print(json.dumps({"killing": rule, "uncommitted": int(rows)}), flush=True)
            os.kill(os.getpid(), signal.SIGKILL)

    HOOKS.install("rules", hook)  # its one step: before_commit


async def main(names: list[str], rounds: int, task_id: str | None) -> None:
    settings = get_settings()
    engine = make_engine(settings)
    rules = [r for r in load_rules(settings) if r.name in names]
    bound = await bind(engine, rules)
    if kill_at := int(os.environ.get("RULES_KILL_AT_BATCH", "0")):
        install_kill_hook(kill_at)
    print("ready", flush=True)
    go = os.environ.get("RULES_GO_FILE", "")
    while go and not os.path.exists(go):
        await asyncio.sleep(0.01)
    totals = dict.fromkeys(names, 0)
    for _ in range(rounds):
        for b in bound:
            if task_id:
                result = await rules_engine.run_task(engine, b, task_id)
            else:
                result = await rules_engine.run_rule(engine, b)
            totals[b.rule.name] += result.rows
    await engine.dispose()
    print(json.dumps(totals), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1].split(","), int(sys.argv[2]), (sys.argv[3:] or [None])[0]))
