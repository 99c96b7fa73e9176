"""Every periodic job, in one place: task (its queue follows from the name), interval or
crontab, catch-up policy after downtime, and optional time limits.

    Entry("counters-flush", "counters.flush", 2.0)                      # every 2 s, skip
    Entry("reports", "maintenance.reports", cron="0 3 * * *", catch_up="once")

Slots are nominal due times: multiples of `every` since the Unix epoch, or the crontab's
times in UTC. A slot's id (entry + due time) is the task id, so a duplicate is visible.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from celery_stack_core.celery_app import queue_of
from celery_stack_core.config import Settings

# After downtime: "skip" drops missed slots (sends one only if it is at most BEAT_SKIP_GRACE
# late), "once" sends the newest missed slot once, "all" sends every missed slot (bounded by
# BEAT_CATCHUP_MAX).
CatchUp = Literal["skip", "once", "all"]


@dataclass(frozen=True)
class Entry:
    name: str
    task: str  # routed to its queue by name prefix (celery_stack_core.celery_app)
    every: float = 0.0  # seconds; or set `cron`
    catch_up: CatchUp = "skip"
    cron: str | None = None  # five-field crontab, UTC
    soft_time_limit: float | None = None  # override the queue's limits for this job
    time_limit: float | None = None

    def __post_init__(self) -> None:
        if (self.every > 0) == (self.cron is not None):
            raise ValueError(f"entry {self.name!r}: set exactly one of every > 0 or cron")
        if ":" in self.name or not self.name:
            raise ValueError(f"entry name {self.name!r} must be non-empty and contain no ':'")
        queue_of(self.task)  # refuses a task no queue consumes

    @property
    def queue(self) -> str:
        return queue_of(self.task)


def schedule(settings: Settings) -> list[Entry]:
    entries = [
        Entry("counters-flush", "counters.flush", settings.counters.flush_interval),
        Entry("counters-recount", "counters.recount", settings.counters.recount_interval),
        Entry(
            "counters-reconcile", "counters.reconcile", settings.counters.reconcile_interval, "once"
        ),
        Entry("outbox-relay", "maintenance.outbox_relay", settings.outbox.relay_interval),
    ]
    # Maintenance rules (celery_stack_core.rules): one entry each; a name used twice is refused.
    from celery_stack_beat.rules_schedule import refuse_duplicates, rule_entries

    return refuse_duplicates(entries + rule_entries(settings))
