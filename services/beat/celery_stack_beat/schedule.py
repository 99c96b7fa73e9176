"""Every periodic job, in one place: task, interval, catch-up policy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from celery_stack_core.config import Settings

CatchUp = Literal["skip", "once", "all"]


@dataclass(frozen=True)
class Entry:
    name: str
    task: str  # routed to its queue by name prefix (celery_stack_core.celery_app)
    every: float  # seconds
    catch_up: CatchUp = "skip"


def schedule(settings: Settings) -> list[Entry]:
    return [
        Entry("counters-flush", "counters.flush", settings.COUNTER_FLUSH_INTERVAL),
        Entry("counters-recount", "counters.recount", settings.RECOUNT_INTERVAL),
        Entry("counters-reconcile", "counters.reconcile", settings.RECONCILE_INTERVAL, "once"),
    ]
