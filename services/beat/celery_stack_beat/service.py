"""One beat replica: campaign as a standby, lead (tick + renew) once elected, release on
SIGTERM, exit as soon as leadership is lost or cannot be renewed in time (a fresh process,
with a fresh identity and empty memory, then starts over as a standby).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis

from celery_stack_beat import election, election_k8s, fencing
from celery_stack_beat.election import Backend, Leadership, Outcome, Timing
from celery_stack_beat.election_redis import RedisLease
from celery_stack_beat.runner import Replica, Ticker, send_slot
from celery_stack_beat.schedule import Entry
from celery_stack_beat.status import leader_record, serve_http
from celery_stack_core import celery_metrics, keys, metrics
from celery_stack_core.celery_app import make_celery
from celery_stack_core.config import Settings
from celery_stack_core.identity import lease_holder
from celery_stack_core.lua import lua
from celery_stack_core.redis_client import make_async_redis

log = logging.getLogger(__name__)
T = TypeVar("T")


async def best_effort(what: str, step: Awaitable[T]) -> T | None:
    """A step whose failure must not stop the replica (the lease TTL, the next refresh or the
    next election attempt repairs it): run it, and log a failure with what it was."""
    try:
        return await step
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        log.warning("beat step failed", extra={"step": what, "error": repr(exc)})
        return None


EXIT_OK = 0
EXIT_CONFIG = 2  # election backend cannot be set up
EXIT_LOST = 3  # leadership lost or not renewed in time: the orchestrator restarts us


def election_kind(settings: Settings) -> str:
    if settings.beat.election != "auto":
        return settings.beat.election
    return "kubernetes" if election_k8s.in_cluster() else "redis"


async def make_backend(
    settings: Settings, redis: aioredis.Redis, identity: str, timing: Timing
) -> Backend:
    if election_kind(settings) == "kubernetes":
        return await election_k8s.connect(
            settings, identity, timing, lambda: fencing.current_epoch(redis)
        )
    return RedisLease(redis, identity, timing)


async def _fence(redis: aioredis.Redis, epoch: int) -> bool:
    """Make the Lease's epoch current in Redis before sending anything (Kubernetes election)."""
    try:
        if await fencing.raise_epoch(redis, epoch):
            return True
        log.error("acquired the Lease with a stale epoch; giving it back", extra={"epoch": epoch})
    except Exception as exc:
        log.error("cannot record the new epoch in Redis", extra={"error": repr(exc)})
    return False


class Publisher:
    """The informational leader record in Redis (any backend): who leads, since when."""

    def __init__(self, redis: aioredis.Redis, replica: Replica, timing: Timing) -> None:
        self.redis = redis
        self.replica = replica
        self.ttl_ms = int(timing.lease * 1000)
        self.value = ""

    async def publish(self, epoch: int) -> None:
        self.value = json.dumps(
            {
                "holder": self.replica.identity,
                "epoch": epoch,
                "election": self.replica.election,
            },
            separators=(",", ":"),
        )
        await self.refresh()

    async def refresh(self) -> None:
        await self.redis.set(keys.BEAT_LEADER, self.value, px=self.ttl_ms)

    async def clear(self) -> None:
        script = self.redis.register_script(lua(__file__, "lease_release"))
        await script(keys=[keys.BEAT_LEADER], args=[self.value, ""])


def _standby_observer(
    redis: aioredis.Redis, backend: Backend, replica: Replica
) -> Callable[[], Awaitable[None]]:
    async def observe() -> None:
        try:
            record = await leader_record(redis)
        except Exception as exc:
            log.warning("cannot read the leader record", extra={"error": repr(exc)})
            record = None
        if record is None:
            holder = await best_effort("read the lease holder", backend.holder())
            record = {"holder": holder} if holder else None
        if record != replica.leader:
            log.info(
                "standby: leader is %s",
                (record or {}).get("holder", "nobody"),
                extra={"leader": record, "identity": replica.identity},
            )
        replica.leader = record
        if record and record.get("epoch"):
            replica.epoch = int(record["epoch"])
            metrics.BEAT_EPOCH.set(replica.epoch)
        replica.progressed()

    return observe


@dataclass(frozen=True)
class _Beat:
    """What one replica works with from start to exit."""

    settings: Settings
    redis: aioredis.Redis
    backend: Backend
    replica: Replica
    entries: list[Entry]
    timing: Timing
    stop: asyncio.Event


async def _stop_tasks(*tasks: asyncio.Task[Any], timeout: float) -> None:
    """Cancel and reap the leader's tasks, bounded: a task that lost its cancellation (a race
    inside asyncio.wait_for) must not keep the process from exiting on SIGTERM."""
    for task in tasks:
        task.cancel()
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            log.warning(
                "beat task failed while stopping",
                extra={"task": task.get_name(), "error": repr(task.exception())},
            )
    for task in pending:
        log.error(
            "beat task ignored its cancellation; exiting anyway", extra={"task": task.get_name()}
        )


async def _lead(beat: _Beat, leadership: Leadership) -> Outcome:
    redis, replica, timing, stop = beat.redis, beat.replica, beat.timing, beat.stop
    app = make_celery(beat.settings, "celery_stack_beat")
    celery_metrics.install_publisher()

    inflight: set[asyncio.Future[None]] = set()

    async def send(entry: Entry, due_ms: int, epoch: int) -> None:
        # Shielded: a send handed to the broker finishes even if the tick is cancelled, and the
        # app is closed only after it (closing the producer under a running send can hang it).
        fut = asyncio.ensure_future(asyncio.to_thread(send_slot, app, entry, due_ms, epoch))
        inflight.add(fut)
        fut.add_done_callback(inflight.discard)
        await asyncio.shield(fut)

    publisher = Publisher(redis, replica, timing)
    await best_effort("publish the leader record", publisher.publish(leadership.epoch))
    ticker = Ticker(redis, beat.entries, leadership, replica, beat.settings, send)
    tick_task = asyncio.create_task(ticker.run(), name="beat-tick")

    async def renewed() -> None:
        await best_effort("refresh the leader record", publisher.refresh())

    hold_task = asyncio.create_task(
        election.hold(beat.backend, leadership, timing, stop, on_renew=renewed), name="beat-hold"
    )
    try:
        await asyncio.wait({tick_task, hold_task}, return_when=asyncio.FIRST_COMPLETED)
        if tick_task.done() and not hold_task.done():
            # The ticker only returns when fenced (a newer epoch exists) or if it crashed.
            if tick_task.exception() is not None:
                log.error("beat tick loop crashed", exc_info=tick_task.exception())
            leadership.lost = True
            hold_task.cancel()
            return Outcome.LOST
        return hold_task.result()
    finally:
        leadership.lost = leadership.lost or not stop.is_set()
        ticker.stopping = True
        await _stop_tasks(tick_task, hold_task, timeout=timing.retry + 5)
        # The ticker's sends include clearing the slot from pending once the broker has it.
        if inflight or ticker.inflight:
            await asyncio.wait(inflight | ticker.inflight, timeout=10)
        if stop.is_set() and not leadership.lost:
            await best_effort("clear the leader record", publisher.clear())
        app.close()


async def serve(settings: Settings, entries: list[Entry], stop: asyncio.Event) -> int:
    timing = Timing.from_settings(settings)
    kind = election_kind(settings)
    redis = make_async_redis(settings)
    replica = Replica(lease_holder(settings), kind, settings.beat.heartbeat_file)
    server = serve_http(settings.observability.metrics_port, replica, settings.beat.alive_max_age)
    metrics.BEAT_IS_LEADER.labels(kind).set(0)
    log.info(
        "beat replica starting as standby",
        extra={"identity": replica.identity, "election": kind, "entries": len(entries)},
    )
    backend: Backend | None = None
    try:
        try:
            backend = await make_backend(settings, redis, replica.identity, timing)
        except Exception as exc:  # no kubeconfig / in-cluster config for BEAT_ELECTION=kubernetes
            log.error("cannot set up leader election", extra={"election": kind, "error": repr(exc)})
            return EXIT_CONFIG
        observe = _standby_observer(redis, backend, replica)
        leadership = await election.campaign(backend, timing, stop, on_attempt=observe)
        if leadership is None:
            log.info("beat standby stopping", extra={"identity": replica.identity})
            return EXIT_OK
        if kind == "kubernetes" and not await _fence(redis, leadership.epoch):
            metrics.BEAT_TRANSITIONS.labels("refused").inc()
            await best_effort("release the refused lease", backend.release())
            return EXIT_LOST
        replica.role, replica.epoch, replica.leadership = "leader", leadership.epoch, leadership
        replica.leader = {"holder": replica.identity, "epoch": leadership.epoch, "election": kind}
        metrics.BEAT_IS_LEADER.labels(kind).set(1)
        metrics.BEAT_EPOCH.set(leadership.epoch)
        metrics.BEAT_TRANSITIONS.labels("acquired").inc()
        log.info(
            "became leader",
            extra={"identity": replica.identity, "epoch": leadership.epoch, "election": kind},
        )
        beat = _Beat(settings, redis, backend, replica, entries, timing, stop)
        outcome = await _lead(beat, leadership)
        metrics.BEAT_IS_LEADER.labels(kind).set(0)
        replica.role = "stopping"
        if outcome is Outcome.STOPPED:
            leadership.lost = True  # nothing is sent after this point
            await best_effort("release the lease on shutdown", backend.release())
            metrics.BEAT_TRANSITIONS.labels("released").inc()
            log.info("released leadership on shutdown", extra={"epoch": leadership.epoch})
            return EXIT_OK
        metrics.BEAT_TRANSITIONS.labels("lost").inc()
        log.error(
            "lost leadership; exiting so a fresh process starts as a standby",
            extra={"epoch": leadership.epoch, "reason": outcome.value},
        )
        return EXIT_LOST
    finally:
        if backend is not None:
            await best_effort("close the election backend", backend.close())
        await redis.aclose()
        if server is not None:
            server.shutdown()
