"""Which slots of an entry are due, and what its catch-up policy sends (pure functions).

A slot is a nominal due time in integer milliseconds since the Unix epoch: a multiple of the
entry's interval, or a time its crontab names (UTC). `last` is the newest slot already claimed
(Redis: keys.BEAT_LAST), so a new leader neither repeats nor forgets slots.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from cronsim import CronSim

from celery_stack_beat.schedule import Entry

# A crontab walk never counts more than this many slots (a "* * * * *" entry down for a week):
# the missed/coalesced counts are then a lower bound.
_CRON_WALK_MAX = 10_000


def _step_ms(entry: Entry) -> int:
    return max(1, round(entry.every * 1000))


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def latest_at_or_before(entry: Entry, now_ms: int) -> int:
    """The newest slot <= now: where a new entry's history starts (nothing before it is due)."""
    if entry.cron is None:
        step = _step_ms(entry)
        return (now_ms // step) * step
    # cronsim works in whole seconds; a slot exactly at now counts as "at or before".
    return _ms(next(CronSim(entry.cron, _dt(now_ms + 1000).replace(microsecond=0), reverse=True)))


def next_after(entry: Entry, after_ms: int) -> int:
    """The first slot strictly after `after_ms`."""
    if entry.cron is None:
        step = _step_ms(entry)
        return (after_ms // step + 1) * step
    return _ms(next(CronSim(entry.cron, _dt(after_ms).replace(microsecond=0))))


def due_between(entry: Entry, after_ms: int, upto_ms: int, keep: int) -> tuple[list[int], int]:
    """Slots in (after, upto]: the newest `keep` of them (ascending) and how many there are."""
    if upto_ms <= after_ms:
        return [], 0
    if entry.cron is None:
        step = _step_ms(entry)
        first, last = after_ms // step + 1, upto_ms // step
        total = max(0, last - first + 1)
        lo = max(first, last - keep + 1)
        return [k * step for k in range(lo, last + 1)], total
    # Walk back from upto: the newest slots are the ones kept, however long the downtime.
    out: list[int] = []
    for dt in CronSim(entry.cron, _dt(upto_ms + 1000).replace(microsecond=0), reverse=True):
        ms = _ms(dt)
        if ms <= after_ms or len(out) >= _CRON_WALK_MAX:
            break
        if ms <= upto_ms:
            out.append(ms)
    return out[:keep][::-1], len(out)


@dataclass
class Plan:
    send: list[int] = field(default_factory=list)  # slots to claim and send, ascending
    skip: int | None = None  # slot to claim without sending (records the skip as last-run)
    missed: int = 0  # slots the policy drops
    coalesced: int = 0  # slots covered by a single "once" run


def plan(entry: Entry, last_ms: int, now_ms: int, *, skip_grace_ms: int, catchup_max: int) -> Plan:
    keep = catchup_max if entry.catch_up == "all" else 1
    due, total = due_between(entry, last_ms, now_ms, keep)
    if not due:
        return Plan()
    newest = due[-1]
    if entry.catch_up == "all":
        return Plan(send=due, missed=total - len(due))
    if entry.catch_up == "once":
        return Plan(send=[newest], coalesced=total - 1)
    if now_ms - newest <= skip_grace_ms:
        return Plan(send=[newest], missed=total - 1)
    return Plan(skip=newest, missed=total)
