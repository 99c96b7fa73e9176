"""Beat entries of the maintenance rules: one per enabled rule, named after it, sending
`maintenance.rule.<name>` with the rule's schedule, catch-up policy and time limits. The
slot's task id (`beat:<rule>:<due ms>`) is what the rule run is recorded and deduplicated by."""

from __future__ import annotations

from celery_stack_beat.schedule import Entry
from celery_stack_core.config import Settings
from celery_stack_core.rules import load_rules
from celery_stack_core.rules.engine import task_name


def rule_entries(settings: Settings) -> list[Entry]:
    return [
        Entry(
            rule.name,
            task_name(rule),
            rule.every or 0.0,
            rule.catch_up,
            cron=rule.cron,
            soft_time_limit=rule.soft_time_limit,
            time_limit=rule.time_limit,
        )
        for rule in load_rules(settings)
        if rule.enabled
    ]


def refuse_duplicates(entries: list[Entry]) -> list[Entry]:
    """Two entries with one name would share slot ids and last-run state: refuse at boot."""
    seen: set[str] = set()
    for entry in entries:
        if entry.name in seen:
            raise ValueError(f"beat entry {entry.name!r} is defined twice")
        seen.add(entry.name)
    return entries
