"""Every Redis key name, in one place.

Redis Cluster: every Lua script's keys share one hash tag ({...}), so they hash to one slot: a
counter shard's keys ({post:views:3}), the dirty set ({dirty}), the locks with their owners'
records ({locks}) and beat's keys ({beat}). Two scripts are the exception, both the janitor's
orphaned-results sweep: scan_results.lua SCANs one node and apply_results.lua is called with
Celery's own result keys, which carry no hash tag; that sweep needs a single Redis (or one run
per node). libs/core/tests/test_keys.py checks each script's key list and that no script
escapes the check.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

PREFIX = "cs"
DIRTY = f"{PREFIX}:{{dirty}}"  # set of "type:id" whose action counts must be recounted
DIRTY_CLAIMED = f"{PREFIX}:{{dirty}}:claimed"  # zset member -> claim time (ms)


def shard_of(target_id: int, shards: int) -> int:
    # crc32, not hash(): stable across processes and restarts.
    return zlib.crc32(str(target_id).encode()) % shards


@dataclass(frozen=True)
class ShardKeys:
    target: str
    field: str
    shard: int

    @property
    def name(self) -> str:
        return f"{self.target}:{self.field}:{self.shard}"

    def _k(self, suffix: str) -> str:
        return f"{PREFIX}:cnt:{{{self.name}}}:{suffix}"

    @property
    def live(self) -> str:
        return self._k("live")

    @property
    def inflight(self) -> str:
        return self._k("inflight")

    @property
    def batch(self) -> str:
        return self._k("batch")

    @property
    def live_since(self) -> str:
        return self._k("since")

    @property
    def inflight_since(self) -> str:
        return self._k("inflight_since")

    @property
    def generation(self) -> str:
        """Counts the claims of new batches (never deleted): a reader that sees it unchanged
        across its Redis and SQL reads knows no flush committed in between."""
        return self._k("gen")

    @property
    def trace_links(self) -> str:
        # list of W3C traceparents of recent traced increments; the flush links its span to them
        return self._k("trace_links")

    @property
    def lease(self) -> str:
        return f"flush:{self.name}"


def unique_viewers(target: str, target_id: int) -> str:
    return f"{PREFIX}:uv:{target}:{target_id}"


# --- locks: one hash tag for the locks and their owners' records (lock_*.lua touch both) ------
LOCKS = f"{PREFIX}:{{locks}}"
LOCK_PATTERN = f"{LOCKS}:lock:*"  # SCAN MATCH pattern of every lock key
# hash: `held` (locks the last real locks sweep left held), `leaked` (locks the janitor released,
# counted by the release script itself); read by the maintenance worker's /metrics (sweeps/locks.py)
LOCK_STATS = f"{LOCKS}:stats"


def lock(name: str) -> str:
    return f"{LOCKS}:lock:{name}"


def owner_locks(owner_id: str) -> str:
    return f"{LOCKS}:owner:{owner_id}:locks"


def owner_heartbeat(owner_id: str) -> str:
    return f"{LOCKS}:owner:{owner_id}:alive"


# --- beat: one hash tag, so the claim script's keys stay in one Cluster slot -------------------
BEAT_LEASE = f"{PREFIX}:{{beat}}:lease"  # Redis election: the leader's owner record (SET NX PX)
BEAT_EPOCH = (
    f"{PREFIX}:{{beat}}:epoch"  # fencing epoch: INCR on acquisition / raised to the Lease's
)
BEAT_LAST = f"{PREFIX}:{{beat}}:last"  # hash entry -> nominal due (ms) of its last claimed slot
# zset: task id of each claimed slot not yet handed to the broker -> claim time (Redis ms)
BEAT_PENDING = f"{PREFIX}:{{beat}}:pending"
BEAT_LEADER = f"{PREFIX}:{{beat}}:leader"  # who leads (any backend), for status and standbys
BEAT_RELEASED = f"{PREFIX}:{{beat}}:released"  # pub/sub: the Redis lease was just released


def beat_slot(entry: str, due_ms: int) -> str:
    return f"{PREFIX}:{{beat}}:slot:{entry}:{due_ms}"
