"""Leader election on a Redis lease: SET NX PX with an owner record, an epoch counter
incremented in the same script, compare-and-extend renewals, compare-and-delete release.

Redis enforces the lease's expiry itself (PX), so a standby simply retries SET NX.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from celery_stack_beat.election import Timing
from celery_stack_core import keys
from celery_stack_core.lua import lua

log = logging.getLogger(__name__)


class RedisLease:
    kind = "redis"

    def __init__(self, redis: aioredis.Redis, identity: str, timing: Timing) -> None:
        self.redis = redis
        self.identity = identity
        self.timing = timing
        self.record = ""
        self._pubsub: PubSub | None = None

    @property
    def _ttl_ms(self) -> int:
        return int(self.timing.lease * 1000)

    async def try_acquire(self) -> int | None:
        record = json.dumps(
            {"holder": self.identity, "at": round(time.time(), 3)}, separators=(",", ":")
        )
        script = self.redis.register_script(lua(__file__, "lease_acquire"))
        got = await script(keys=[keys.BEAT_LEASE, keys.BEAT_EPOCH], args=[record, self._ttl_ms])
        if not got or int(got[0]) == 0:
            return None
        self.record = str(got[1])
        return int(got[0])

    async def renew(self) -> bool:
        script = self.redis.register_script(lua(__file__, "lease_renew"))
        return bool(await script(keys=[keys.BEAT_LEASE], args=[self.record, self._ttl_ms]))

    async def release(self) -> None:
        if self.record:
            script = self.redis.register_script(lua(__file__, "lease_release"))
            await script(keys=[keys.BEAT_LEASE], args=[self.record, keys.BEAT_RELEASED])
            self.record = ""

    async def wait(self, seconds: float) -> None:
        """Sleep until the next attempt, waking early when the leader announces a release
        (SIGTERM handover in milliseconds instead of up to a retry period)."""
        try:
            if self._pubsub is None:
                self._pubsub = self.redis.pubsub()
                await self._pubsub.subscribe(keys.BEAT_RELEASED)
            deadline = asyncio.get_running_loop().time() + seconds
            while (left := deadline - asyncio.get_running_loop().time()) > 0:
                msg = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=left)
                if msg is not None:
                    return
        except (RedisError, OSError) as exc:  # no pub/sub: plain polling still works
            log.warning(
                "standby wait without release announcements (pub/sub failed); polling",
                extra={"error": repr(exc), "identity": self.identity},
            )
            await self._drop_pubsub()
            await asyncio.sleep(max(0.0, seconds))

    async def _drop_pubsub(self) -> None:
        if self._pubsub is not None:
            try:
                await self._pubsub.aclose()
            except (RedisError, OSError) as exc:  # already broken: dropping it is the point
                log.debug("closing a broken pub/sub connection failed", extra={"error": repr(exc)})
            self._pubsub = None

    async def holder(self) -> str | None:
        raw = await self.redis.get(keys.BEAT_LEASE)
        if not raw:
            return None
        return str(json.loads(raw).get("holder"))

    async def close(self) -> None:
        await self._drop_pubsub()
