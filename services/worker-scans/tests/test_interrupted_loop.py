"""An exception raised into the event loop from outside (Celery's soft time limit is a signal
whose handler raises SoftTimeLimitExceeded) must not leave the scan coroutine pending in the
per-process loop, to resume during the next task's aio.run."""

import asyncio
import signal

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from celery_stack_core import aio


def test_interrupted_coroutine_is_cancelled_not_left_pending():
    events = []

    async def scan():
        try:
            await asyncio.sleep(0.5)
            events.append("resumed")
        except asyncio.CancelledError:
            events.append("cancelled")
            raise

    def soft_limit(signum, frame):
        raise SoftTimeLimitExceeded()

    previous = signal.signal(signal.SIGALRM, soft_limit)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.1)
        with pytest.raises(SoftTimeLimitExceeded):
            aio.run(scan())
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert events == ["cancelled"]
    # the next task on this process's loop does not run the old scan's remainder
    aio.run(asyncio.sleep(0.8))
    assert events == ["cancelled"]


def test_a_coroutine_that_fails_by_itself_is_unaffected():
    async def boom():
        raise ValueError("x")

    with pytest.raises(ValueError):
        aio.run(boom())
    assert aio.run(asyncio.sleep(0, result=7)) == 7
