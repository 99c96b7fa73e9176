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
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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
    """Serve /metrics, /status, /healthz and /readyz from a daemon thread; None when port is 0."""
    if not port:
        return None
    registry = metrics.registry("beat")

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                body, ctype = metrics.render(registry)
                self._reply(200, body, ctype)
            elif path == "/status":
                self._json(200, replica.snapshot())
            elif path in ("/healthz", "/livez"):
                age = replica.progress_age()
                ok = age < alive_max_age
                self._json(200 if ok else 503, {"alive": ok, "progress_age": round(age, 3)})
            elif path == "/readyz":
                # Ready = making progress, and a leader's lease still lets it send.
                snap = replica.snapshot()
                ok = replica.progress_age() < alive_max_age and (
                    snap["role"] != "leader" or snap["may_send"]
                )
                self._json(200 if ok else 503, {"ready": ok, "role": snap["role"]})
            else:
                self._json(404, {"error": "not found"})

        def _json(self, code: int, data: object) -> None:
            self._reply(code, json.dumps(data).encode(), "application/json")

        def _reply(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)  # noqa: S104 - probes and scrapes
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="beat-http", daemon=True).start()
    return server
