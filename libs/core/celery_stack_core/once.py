"""Beat-sent tasks execute once per slot, although beat may send a slot twice (DESIGN "Beat").

Beat sends are at-least-once: a leader killed after the broker took a slot but before it
cleared the slot from pending leaves it to the next leader, which resends it with the same task
id. `OnceTask` (the base class of every task, installed by make_celery) makes the executions
exactly-once: before a task that carries beat's `beat_due_ms` header runs, it claims its task id
with SET NX. A second delivery of the same id finds the claim and is acknowledged without
running (metric `celery_stack_task_duplicates_refused_total{task}`).

- The claim outlives the resend window by far (CLAIM_TTL_S), so a resend can never find it gone.
- A retry (`self.retry`) keeps the task id but is a new execution: the claim key has the retry
  number in it.
- A delivery whose worker died mid-run comes back from the broker flagged `redelivered`; it may
  take over a claim that never finished ("running"), never one that finished ("done"). A resend
  that is not a redelivery never runs beside a running claim.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import redis
from celery import Task

from celery_stack_core.config import get_settings
from celery_stack_core.redis_client import make_redis

log = logging.getLogger(__name__)
# One day: beat resends a pending slot for at most 60 s after its claim (runner.py's
# SEND_RETRY_WINDOW_MS); a day also covers a resend that waits in a long queue.
CLAIM_TTL_S = 24 * 3600
RUNNING, DONE = "running", "done"
BEAT_HEADER = "beat_due_ms"


def claim_key(task_id: str, retries: int) -> str:
    return f"cs:once:{task_id}:{retries}"


@functools.cache
def _client(pid: int) -> redis.Redis:
    return make_redis(get_settings())


def _header(request: Any, name: str) -> Any:
    value = getattr(request, name, None)
    if value is None:
        value = (getattr(request, "headers", None) or {}).get(name)
    return value


def claim(client: redis.Redis, key: str, *, redelivered: bool) -> bool:
    """Whether this delivery may run: the first, or the redelivery of a run that died."""
    if client.set(key, RUNNING, nx=True, ex=CLAIM_TTL_S):
        return True
    return redelivered and client.get(key) == RUNNING


class OnceTask(Task):  # type: ignore[misc]
    """Every task's base: a beat-sent task claims its task id before it runs."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        if _header(request, BEAT_HEADER) is None or request.id is None or request.called_directly:
            return super().__call__(*args, **kwargs)
        key = claim_key(request.id, int(request.retries or 0))
        client = _client(os.getpid())
        redelivered = bool((request.delivery_info or {}).get("redelivered"))
        if not claim(client, key, redelivered=redelivered):
            from celery_stack_core import metrics  # late: after the multiprocess dir is set

            metrics.TASK_DUPLICATES_REFUSED.labels(self.name).inc()
            log.warning(
                "refused a duplicate execution of a beat slot",
                extra={"task": self.name, "task_id": request.id, "redelivered": redelivered},
            )
            return None
        try:
            return super().__call__(*args, **kwargs)
        finally:
            _finished(client, key, self.name)


def _finished(client: redis.Redis, key: str, task: str) -> None:
    """It ran (or raised): only a redelivery after a crash may still find the claim RUNNING."""
    try:
        client.set(key, DONE, xx=True, keepttl=True)
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        # The claim stays RUNNING: a later resend is still refused; only a redelivery of this
        # very message (which will not come: it is acknowledged) could take it over.
        log.warning("could not mark a beat slot done", extra={"task": task, "error": repr(exc)})
