"""What every sweep shares: its context, its report, and the one place that logs and counts.

A sweep first *plans* from what it reads (the same code for a dry run and a real run), then, on a
real run only, *executes* each planned action as a compare-and-set against the state it
observed. On unchanged state the real run therefore does exactly what the dry run reported; an
action whose target changed in between is skipped with reason `changed`, never forced.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from sqlalchemy.ext.asyncio import AsyncEngine

from celery_stack_core.config import Settings
from celery_stack_core.outbox import Publisher

log = logging.getLogger("celery_stack.janitor")

# Kubernetes pods that exist now, by UID; None when the janitor cannot tell (not on Kubernetes,
# or the API did not answer): then nothing owned by a pod is ever released.
PodSnapshot = Callable[[], Awaitable[frozenset[str] | None]]
# Send a task by name with a task id (the counters flush that resumes stale batches).
TaskSender = Callable[[str, str], Awaitable[None]]
# Called after each sweep of a run with its report (job progress).
Progress = Callable[["SweepReport"], Awaitable[None]]
SAMPLE = 50  # actions kept verbatim in a report; counts are always complete
Detail = tuple[tuple[str, Any], ...]


async def no_pods() -> frozenset[str] | None:
    return None


@dataclass
class SweepContext:
    redis: aioredis.Redis
    engine: AsyncEngine
    settings: Settings
    pods: PodSnapshot = no_pods
    publish: Publisher | None = None  # outbox publisher (stuck scans, unsent rows)
    send_task: TaskSender | None = None
    deadline: float | None = None  # time.monotonic() after which sweeps stop early
    keep_all: bool = False  # keep every action in the report (tests compare them)

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline


@dataclass(frozen=True)
class Action:
    action: str  # delete | expire | release | drop_owner | requeue | dead | resume | return ...
    target: str
    detail: tuple[tuple[str, Any], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"action": self.action, "target": self.target, **dict(self.detail)}


@dataclass
class SweepReport:
    sweep: str
    dry_run: bool
    examined: int = 0
    found: int = 0
    done: int = 0
    by_action: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    actions: list[Action] = field(default_factory=list)
    complete: bool = True
    duration: float = 0.0

    def outcome(self) -> dict[str, Any]:
        """What was decided and done, without timing: a dry run's equals the real run's."""
        return {
            "examined": self.examined,
            "found": self.found,
            "done": self.done,
            "by_action": dict(sorted(self.by_action.items())),
            "skipped": dict(sorted(self.skipped.items())),
            "actions": sorted(a.as_dict().__repr__() for a in self.actions),
            "complete": self.complete,
        }

    def as_dict(self) -> dict[str, Any]:
        return {
            "sweep": self.sweep,
            "dry_run": self.dry_run,
            "examined": self.examined,
            "found": self.found,
            "done": self.done,
            "by_action": dict(self.by_action),
            "skipped": dict(self.skipped),
            "actions": [a.as_dict() for a in self.actions[:SAMPLE]],
            "complete": self.complete,
            "duration_seconds": round(self.duration, 3),
        }


class Recorder:
    """Counts and logs (one JSON line per action) one sweep run; its report reaches Prometheus
    through janitor_runs (sweeps/runs.py), not through this process's metrics."""

    def __init__(self, ctx: SweepContext, sweep: str, *, dry_run: bool) -> None:
        self.ctx = ctx
        self.report = SweepReport(sweep, dry_run)
        self._started = time.monotonic()

    @property
    def dry_run(self) -> bool:
        return self.report.dry_run

    def examined(self, n: int) -> None:
        self.report.examined += n

    def found(self, action: Action) -> None:
        self.report.found += 1
        if self.ctx.keep_all or len(self.report.actions) < SAMPLE:
            self.report.actions.append(action)

    def done(self, action: Action, n: int = 1) -> None:
        """The action was carried out (real run) or would be (dry run)."""
        self.report.done += n
        self.report.by_action[action.action] += n
        log.info(
            "janitor action",
            extra={
                "sweep": self.report.sweep,
                "dry_run": self.dry_run,
                **action.as_dict(),
                **({"rows": n} if n != 1 else {}),
            },
        )

    def found_all(self, action: str, targets: Sequence[str], detail: Detail = ()) -> None:
        """Many actions of one kind planned in one step (Action objects only for the sample)."""
        self.report.found += len(targets)
        keep = len(targets) if self.ctx.keep_all else SAMPLE - len(self.report.actions)
        self.report.actions += [Action(action, t, detail) for t in targets[: max(0, keep)]]

    def done_all(self, action: str, targets: Sequence[str], detail: Detail = ()) -> None:
        """Many actions of one kind carried out (or, dry run, that would be) in one step: counted
        and logged as ONE JSON line whose `targets` names every one of them, so each action
        is still in the log (grep a key, find its line) at a fraction of a line per key."""
        if not targets:
            return
        n = len(targets)
        self.report.done += n
        self.report.by_action[action] += n
        log.info(
            "janitor actions",
            extra={
                "sweep": self.report.sweep,
                "dry_run": self.dry_run,
                "action": action,
                "count": n,
                "targets": list(targets),
                **dict(detail),
            },
        )

    def skip(self, reason: str, target: str = "", n: int = 1) -> None:
        self.report.skipped[reason] += n
        if target:
            log.debug(
                "janitor skipped",
                extra={"sweep": self.report.sweep, "reason": reason, "target": target},
            )

    def finish(self) -> SweepReport:
        rep = self.report
        rep.duration = time.monotonic() - self._started
        log.info("janitor sweep finished", extra=rep.as_dict() | {"actions": len(rep.actions)})
        return rep


def cursor_key(sweep: str) -> str:
    return f"cs:janitor:cursor:{sweep}"


async def load_cursor(ctx: SweepContext, sweep: str) -> int:
    return int(await ctx.redis.get(cursor_key(sweep)) or 0)


async def save_cursor(ctx: SweepContext, sweep: str, cursor: int, *, dry_run: bool) -> None:
    """A run that stopped at its key budget goes on from here next time (real runs only, so a
    dry run and the real run after it start at the same place)."""
    if dry_run:
        return
    if cursor:
        await ctx.redis.set(cursor_key(sweep), cursor, ex=86400)
    else:
        await ctx.redis.delete(cursor_key(sweep))
