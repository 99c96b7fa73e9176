"""Leases in Redis: TTL, auto-renewal while the holder works, owner records, compare-and-delete.

    async with hold(redis, "flush:post:views:3", owner=..., ttl=30) as lease:
        if lease is None: ...          # someone else holds it
        ...                             # renewed every ttl/3 in the background
        lease.check()                   # raises LeaseLost if a renewal failed

    async with hold_many(redis, names, owner=..., ttl=30) as leases:   # the free ones of names
        ...                             # one round trip takes, renews or releases them all

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
from redis.exceptions import RedisError

from celery_stack_core import keys
from celery_stack_core.lua import lua

log = logging.getLogger(__name__)


class LeaseLost(RuntimeError):
    """The lease expired or was taken over while we held it: stop before writing more."""


# What a round trip raises when Redis is away or slow: retried (renewal) or left to the TTL
# (release). Anything else is a bug: the lease then counts as lost (renewal) or it propagates.
REDIS_DOWN = (RedisError, OSError)


@dataclass
class Lease:
    redis: aioredis.Redis
    name: str
    owner: str
    ttl: float
    record: str = ""
    lost: bool = False
    # Set before the keeper is cancelled: it ends at its next turn even if a Redis call
    # swallowed the cancellation (one turned into a connection error would be retried forever
    # and the holder would wait on its keeper for good).
    stopping: bool = False
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
        return bool(await self._call(*self._acquire()))

    async def renew(self) -> bool:
        ok = bool(await self._call(*self._renew()))
        if not ok:
            self.lost = True
        return ok

    async def release(self) -> bool:
        return bool(await self._call(*self._release()))

    # Each operation as (script, keys, args), so hold_many can pipeline it for many leases.
    def _acquire(self) -> tuple[str, list[str], list[str | int]]:
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
        return (
            "lock_acquire",
            [self.key, keys.owner_locks(self.owner), keys.owner_heartbeat(self.owner)],
            [self.record, self._ms, self._heartbeat_ms],
        )

    def _renew(self) -> tuple[str, list[str], list[str | int]]:
        return (
            "lock_renew",
            [self.key, keys.owner_heartbeat(self.owner)],
            [self.record, self._ms, self._heartbeat_ms],
        )

    def _release(self) -> tuple[str, list[str], list[str | int]]:
        return "lock_release", [self.key, keys.owner_locks(self.owner)], [self.record]

    async def _call(self, script: str, keys_: list[str], args: list[str | int]) -> object:
        return await self.redis.register_script(lua(__file__, script))(keys=keys_, args=args)

    def check(self) -> None:
        if self.lost:
            raise LeaseLost(self.name)

    async def _keep(self) -> None:
        # Renew at a third of the TTL: two renewals may fail before the lease can expire.
        while not self.stopping:
            await asyncio.sleep(self.ttl / 3)
            try:
                if not await self.renew():
                    log.error("lease lost", extra={"lease": self.name, "owner": self.owner})
                    return
            except REDIS_DOWN as exc:  # Redis hiccup: keep trying until the TTL runs out
                log.warning("lease renewal failed", extra={"lease": self.name, "error": repr(exc)})
            except Exception:
                # Not Redis: no later renewal will do better, and a keeper that died quietly
                # would let the holder write on past the TTL. Lost: check() stops the holder.
                self.lost = True
                log.exception("lease keeper failed", extra={"lease": self.name})
                return


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
        try:
            await _stop_keeper([lease], lease._keeper)
        finally:
            try:
                await lease.release()
            except REDIS_DOWN as exc:  # the TTL frees it; the janitor reports it if owner is gone
                log.warning("lease release failed", extra={"lease": name, "error": repr(exc)})


@contextlib.asynccontextmanager
async def hold_many(
    redis: aioredis.Redis, names: list[str], *, owner: str, ttl: float
) -> AsyncIterator[list[Lease]]:
    """Hold, for the block, every lease of `names` that is free; yields those taken (a name
    another owner holds is left out). The same leases as hold()'s, but one pipelined round trip
    takes them all, one renews them all (every ttl/3) and one releases them: a flusher holding
    a lease per shard pays one round trip, not one per shard, each way."""
    wanted = [Lease(redis, name, owner, ttl) for name in names]
    got = await _pipelined(redis, [lease._acquire() for lease in wanted])
    held = [lease for lease, ok in zip(wanted, got, strict=True) if ok]
    if not held:
        yield held
        return
    keeper = asyncio.create_task(_keep_all(redis, held))
    try:
        yield held
    finally:
        try:
            await _stop_keeper(held, keeper)
        finally:
            try:
                await _pipelined(redis, [lease._release() for lease in held])
            except REDIS_DOWN as exc:  # the TTL frees them; the janitor reports them if owner gone
                log.warning("lease release failed", extra={"leases": len(held), "error": repr(exc)})


async def _stop_keeper(leases: list[Lease], keeper: asyncio.Task[None]) -> None:
    """Stop a keeper and wait for it. `stopping` ends it at its next turn even if the cancel is
    lost in a Redis call; a cancel of the holder itself propagates (then the release, in the
    caller's finally, still runs)."""
    for lease in leases:
        lease.stopping = True
    keeper.cancel()
    await asyncio.wait({keeper})


async def _pipelined(
    redis: aioredis.Redis, calls: list[tuple[str, list[str], list[str | int]]]
) -> list[object]:
    """Run the lock scripts' calls in one pipelined round trip (each script stays atomic)."""
    if not calls:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for script, keys_, args in calls:
            await redis.register_script(lua(__file__, script))(keys=keys_, args=args, client=pipe)
        return list(await pipe.execute())


async def _keep_all(redis: aioredis.Redis, leases: list[Lease]) -> None:
    """hold_many's keeper: renew every lease still held at a third of the TTL, in one round trip."""
    ttl = leases[0].ttl
    while leases and not leases[0].stopping:
        await asyncio.sleep(ttl / 3)
        try:
            renewed = await _pipelined(redis, [lease._renew() for lease in leases])
        except REDIS_DOWN as exc:  # Redis hiccup: keep trying until the TTL runs out
            log.warning("lease renewal failed", extra={"leases": len(leases), "error": repr(exc)})
            continue
        except Exception:  # not Redis: every lease counts as lost (Lease._keep says why)
            for lease in leases:
                lease.lost = True
            log.exception("lease keeper failed", extra={"leases": [x.name for x in leases]})
            return
        for lease, ok in zip(leases, renewed, strict=True):
            if not ok:
                lease.lost = True
                log.error("lease lost", extra={"lease": lease.name, "owner": lease.owner})
        leases = [lease for lease in leases if not lease.lost]
