"""Leases in Redis: TTL, auto-renewal while the holder works, owner records, compare-and-delete.

    async with hold(redis, "flush:post:views:3", owner=..., ttl=30) as lease:
        if lease is None: ...          # someone else holds it
        ...                             # renewed every ttl/3 in the background
        lease.check()                   # raises LeaseLost if a renewal failed

DESIGN "Locks": the value is the owner record, the owner keeps a heartbeat and a set of the
locks it holds, so the janitor can tell a leaked lock (owner gone) from a busy one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from celery_stack_core import keys
from celery_stack_core.lua import lua

log = logging.getLogger(__name__)


class LeaseLost(RuntimeError):
    """The lease expired or was taken over while we held it: stop before writing more."""


@dataclass
class Lease:
    redis: aioredis.Redis
    name: str
    owner: str
    ttl: float
    record: str = ""
    lost: bool = False
    _keeper: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def key(self) -> str:
        return keys.lock(self.name)

    @property
    def _ms(self) -> int:
        return int(self.ttl * 1000)

    @property
    def _heartbeat_ms(self) -> int:
        return int(self.ttl * 2000)

    async def acquire(self) -> bool:
        self.record = json.dumps(
            # ttl: the janitor reads the heartbeat's remaining TTL against 2 x ttl to know how
            # long the owner has been silent (celery_stack_core.sweeps.locks).
            {
                "owner": self.owner,
                "nonce": secrets.token_hex(8),
                "at": round(time.time(), 3),
                "ttl": self.ttl,
            },
            separators=(",", ":"),
        )
        script = self.redis.register_script(lua(__file__, "lock_acquire"))
        got = await script(
            keys=[self.key, keys.owner_locks(self.owner), keys.owner_heartbeat(self.owner)],
            args=[self.record, self._ms, self._heartbeat_ms],
        )
        return bool(got)

    async def renew(self) -> bool:
        script = self.redis.register_script(lua(__file__, "lock_renew"))
        ok = await script(
            keys=[self.key, keys.owner_heartbeat(self.owner)],
            args=[self.record, self._ms, self._heartbeat_ms],
        )
        if not ok:
            self.lost = True
        return bool(ok)

    async def release(self) -> bool:
        script = self.redis.register_script(lua(__file__, "lock_release"))
        return bool(await script(keys=[self.key, keys.owner_locks(self.owner)], args=[self.record]))

    def check(self) -> None:
        if self.lost:
            raise LeaseLost(self.name)

    async def _keep(self) -> None:
        # Renew at a third of the TTL: two renewals may fail before the lease can expire.
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                if not await self.renew():
                    log.error("lease lost", extra={"lease": self.name, "owner": self.owner})
                    return
            except Exception as exc:  # Redis hiccup: keep trying until the TTL runs out
                log.warning("lease renewal failed", extra={"lease": self.name, "error": repr(exc)})


@contextlib.asynccontextmanager
async def hold(
    redis: aioredis.Redis, name: str, *, owner: str, ttl: float
) -> AsyncIterator[Lease | None]:
    """Hold lease `name` for the block, or yield None at once if another owner has it."""
    lease = Lease(redis, name, owner, ttl)
    if not await lease.acquire():
        yield None
        return
    lease._keeper = asyncio.create_task(lease._keep())
    try:
        yield lease
    finally:
        lease._keeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await lease._keeper
        try:
            await lease.release()
        except Exception as exc:  # the TTL frees it; the janitor reports it if the owner is gone
            log.warning("lease release failed", extra={"lease": name, "error": repr(exc)})
