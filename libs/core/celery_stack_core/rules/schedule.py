"""A rule's next due time, for the API. Beat's slot arithmetic, restated: slots are multiples
of `every` since the Unix epoch, or the crontab's times in UTC (celery_stack_beat.slots)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from cronsim import CronSim

from celery_stack_core.rules.spec import Rule


def next_due(rule: Rule, now: datetime) -> datetime:
    if rule.every is not None:
        step_ms = max(1, round(rule.every * 1000))
        now_ms = math.floor(now.timestamp() * 1000)
        return datetime.fromtimestamp((now_ms // step_ms + 1) * step_ms / 1000, tz=UTC)
    assert rule.cron is not None
    return next(CronSim(rule.cron, now.astimezone(UTC).replace(microsecond=0)))
