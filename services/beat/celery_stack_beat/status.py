"""Who leads, with which epoch, and what is due next: the `celery-stack-beat status` CLI (from
Redis, any replica or none) and the HTTP endpoint each replica serves on its metrics port:

    /metrics   Prometheus
    /status    this replica's view (JSON): role, epoch, leader, renewal age, next due slots
    /healthz   200 while this replica makes progress (leader: ticks; standby: attempts)
    /readyz    200 while it makes progress and, if it leads, its lease lets it send
    anything else: 404
"""

from __future__ import annotations

import json
import logging
from http.server import ThreadingHTTPServer
from typing import Any

import redis.asyncio as aioredis

from celery_stack_beat import clock, fencing, slots
from celery_stack_beat.runner import Replica, slot_id
from celery_stack_beat.schedule import Entry
from celery_stack_core import keys, metrics

log = logging.getLogger(__name__)


async def leader_record(redis: aioredis.Redis) -> dict[str, Any] | None:
    raw = await redis.get(keys.BEAT_LEADER)
    return json.loads(raw) if raw else None


async def read_status(redis: aioredis.Redis, entries: list[Entry]) -> dict[str, Any]:
    """The cluster-wide view from Redis: leader record, current epoch, next slot per entry."""
    now_ms = clock.wall_ms()
    last = await fencing.last_runs(redis)
    rows = []
    for e in entries:
        prev = last.get(e.name)
        nxt = slots.next_after(e, prev if prev is not None else now_ms)
        rows.append(
            {
                "entry": e.name,
                "task": e.task,
                "queue": e.queue,
                "schedule": e.cron or f"every {e.every:g}s",
                "catch_up": e.catch_up,
                "last_ms": prev,
                "next_due_ms": nxt,
                "next_task_id": slot_id(e, nxt),
                "overdue_s": round(max(0, now_ms - nxt) / 1000, 3),
            }
        )
    return {
        "leader": await leader_record(redis),
        "epoch": await fencing.current_epoch(redis),
        "now_ms": now_ms,
        "entries": rows,
    }


def serve_http(port: int, replica: Replica, alive_max_age: float) -> ThreadingHTTPServer | None:
    """Serve /metrics, /status, /healthz (/livez) and /readyz through the shared metrics server
    (any other path is 404); None when port is 0."""

    def status() -> tuple[bool, dict[str, Any]]:
        return True, replica.snapshot()

    def alive() -> tuple[bool, dict[str, Any]]:
        age = replica.progress_age()
        ok = age < alive_max_age
        return ok, {"alive": ok, "progress_age": round(age, 3)}

    def ready() -> tuple[bool, dict[str, Any]]:
        # Ready = making progress, and a leader's lease still lets it send.
        snap = replica.snapshot()
        ok = replica.progress_age() < alive_max_age and (
            snap["role"] != "leader" or snap["may_send"]
        )
        return ok, {"ready": ok, "role": snap["role"]}

    checks = {"/status": status, "/healthz": alive, "/livez": alive, "/readyz": ready}
    return metrics.serve(port, metrics.registry("beat"), checks)
