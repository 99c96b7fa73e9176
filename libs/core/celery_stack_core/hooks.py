"""Test seams in product code: one mechanism for every service.

A protocol step announces itself with `await HOOKS.reach(component, step, *context)`; nothing is
installed in production, so that is one dict lookup. A test (or a test-only entrypoint script
run as a real process) installs one function per component and acts at the step it wants:
kill the process, delete a row, raise.

    HOOKS.install("scans", die)                  # die(step, domain) at every scans step
    with HOOKS.installed("flush", record): ...   # removed again at the end of the block

Components and their steps: "scans" (claimed, checkpoint; context: the domain), "api.scans"
(committed: between a scan's COMMIT and its publish; context: the scan id), "flush" (claimed,
read, applied, recorded, committed, acked: celery_stack_counters.flush.STEPS) "api.counts"
(buffers_read: a count read between its Redis read and its SQL read) and "rules"
(before_commit: a rule batch's statement ran, its COMMIT has not; context: rule, rows).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

# (step, *context) -> None, or an awaitable that is awaited.
Hook = Callable[..., Awaitable[None] | None]


class Hooks:
    def __init__(self) -> None:
        self._installed: dict[str, Hook] = {}

    def install(self, component: str, hook: Hook) -> None:
        self._installed[component] = hook

    def remove(self, component: str) -> None:
        self._installed.pop(component, None)

    @contextmanager
    def installed(self, component: str, hook: Hook) -> Iterator[None]:
        self.install(component, hook)
        try:
            yield
        finally:
            self.remove(component)

    async def reach(self, component: str, step: str, *context: str) -> None:
        hook = self._installed.get(component)
        if hook is None:
            return
        result = hook(step, *context)
        if inspect.isawaitable(result):
            await result


HOOKS = Hooks()
