"""Property tests of the janitor's sweeps on real Redis and PostgreSQL (hypothesis).

Random worlds of scan rows (present or deleted, running with live or dead workers), result keys
(with and without TTL, of scans, jobs, beat and unknown ids), locks whose owners are alive or
gone (local processes, pods present or gone, other hosts) with fresh, silent or missing
heartbeats. For every world:
- no sweep deletes the result of an existing row, releases a live owner's lock, or touches a scan
  whose worker is alive;
- the dry run's report equals what the real run then does;
- a second real run finds nothing (idempotent).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import uuid
from dataclasses import dataclass, field

from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy import insert, select, text

from celery_stack_core import keys, sweeps
from celery_stack_core.identity import boot_id
from celery_stack_core.models import Scan
from celery_stack_core.sweeps.base import SweepContext
from celery_stack_core.sweeps.taskids import RESULT_PREFIX


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


HOST, BOOT = socket.gethostname(), boot_id()
DEAD_PID = dead_pid()
LIVE_POD, GONE_POD = "11111111-aaaa-4aaa-8aaa-111111111111", "22222222-bbbb-4bbb-8bbb-222222222222"

# owner kind -> (owner id, alive?)  "pod_live"/"pod_gone" are alive/gone only when pods are known
OWNERS = {
    "local_live": (f"host:{HOST}:{os.getpid()}:{BOOT}", True),
    "local_dead": (f"host:{HOST}:{DEAD_PID}:{BOOT}", False),
    "other_host": ("host:elsewhere:42:cafebabe", False),
    "pod_live": (f"pod:{LIVE_POD}:7", True),
    "pod_gone": (f"pod:{GONE_POD}:7", False),
}
owner_kinds = st.sampled_from(sorted(OWNERS))


@dataclass
class World:
    k8s: bool
    scans: list[dict] = field(default_factory=list)
    results: list[tuple[str, bool]] = field(default_factory=list)  # (task id, has ttl)
    locks: list[tuple[str, str, str]] = field(default_factory=list)  # (name, owner kind, heartbeat)


scan_st = st.fixed_dictionaries(
    {
        "present": st.booleans(),
        "status": st.sampled_from(["queued", "running", "running", "succeeded"]),
        "owner": owner_kinds,
        "silent": st.booleans(),  # heartbeat far in the past
        "deliveries": st.integers(1, 4),
    }
)
lock_st = st.tuples(
    st.sampled_from(["flush:a", "flush:b", "x", "y", "z"]),
    owner_kinds,
    st.sampled_from(["fresh", "silent", "missing"]),
)


@st.composite
def worlds(draw):
    w = World(k8s=draw(st.booleans()))
    w.scans = draw(st.lists(scan_st, max_size=6))
    salt = draw(st.integers(0, 2**32)) << 32
    for i, s in enumerate(w.scans):
        s["id"] = str(uuid.UUID(int=salt + i + 1))
        if draw(st.booleans()):
            w.results.append((f"scan-{s['id']}-1", draw(st.booleans())))
    w.results += [
        (f"scan-{uuid.uuid4()}-1", draw(st.booleans())) for _ in range(draw(st.integers(0, 3)))
    ]
    w.results += [(f"beat:flush:{i}", draw(st.booleans())) for i in range(draw(st.integers(0, 2)))]
    w.results += [(f"other-{i}", draw(st.booleans())) for i in range(draw(st.integers(0, 2)))]
    w.locks = list(
        {name: (name, o, hb) for name, o, hb in draw(st.lists(lock_st, max_size=5))}.values()
    )
    return w


def alive(kind: str, w: World) -> bool:
    owner_alive = OWNERS[kind][1]
    if kind.startswith("pod") and not w.k8s:
        return True  # pods unknown: must be treated as alive
    return owner_alive


async def build(world: World, engine, redis) -> None:
    await redis.flushdb()
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE scans, outbox, findings, maintenance_jobs CASCADE"))
        for s in world.scans:
            if not s["present"]:
                continue
            hb = "now() - interval '1 hour'" if s["silent"] else "now()"
            await conn.execute(
                insert(Scan.__table__).values(
                    id=s["id"],
                    owner="u",
                    domain="example.com",
                    status=s["status"],
                    deliveries=s["deliveries"],
                    worker=OWNERS[s["owner"]][0] if s["status"] == "running" else None,
                )
            )
            if s["status"] == "running":
                await conn.execute(
                    text(f"UPDATE scans SET heartbeat_at = {hb} WHERE id = :id"), {"id": s["id"]}
                )
    for tid, ttl in world.results:
        await redis.set(
            RESULT_PREFIX + tid,
            json.dumps({"status": "SUCCESS", "task_id": tid}),
            ex=600 if ttl else None,
        )
    for name, kind, hb in world.locks:
        owner = OWNERS[kind][0]
        record = json.dumps({"owner": owner, "nonce": name, "at": 0, "ttl": 30})
        await redis.set(keys.lock(name), record, px=600_000)
        await redis.sadd(keys.owner_locks(owner), keys.lock(name))
        if hb != "missing":
            # written with 2 x ttl = 60 s; "silent" = last beat 50 s ago (past the 30 s grace)
            await redis.set(
                keys.owner_heartbeat(owner), record, px=59_000 if hb == "fresh" else 10_000
            )


async def snapshot(engine, redis) -> dict:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(Scan.__table__.c.id, Scan.__table__.c.status, Scan.__table__.c.attempt)
            )
        ).all()
    locks_now = {k: await redis.get(k) for k in await redis.keys(keys.lock("*"))}  # test-only
    results_now = set(await redis.keys(RESULT_PREFIX + "*"))  # test-only
    return {
        "scans": {str(r.id): (r.status, r.attempt) for r in rows},
        "locks": locks_now,
        "results": results_now,
    }


@hsettings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    phases=[Phase.explicit, Phase.generate],
)
@given(world=worlds())
async def test_sweeps_never_touch_live_things_and_dry_run_equals_real_run(
    world, settings, engine, _redis_client
):
    redis = _redis_client
    await build(world, engine, redis)

    async def pods():
        return frozenset({LIVE_POD}) if world.k8s else None

    ctx = SweepContext(
        redis,
        engine,
        settings.replace(JANITOR_LOCK_GRACE=30.0),
        pods=pods,
        keep_all=True,
    )
    before = await snapshot(engine, redis)
    dry = await sweeps.run(ctx, list(sweeps.SWEEPS), dry_run=True)
    assert await snapshot(engine, redis) == before, "a dry run changed something"
    real = await sweeps.run(ctx, list(sweeps.SWEEPS), dry_run=False)
    assert [r.outcome() for r in dry] == [r.outcome() for r in real]
    after = await snapshot(engine, redis)

    present = {s["id"]: s for s in world.scans if s["present"]}
    for tid, _ in world.results:
        if (tid.startswith("scan-") and tid[5:-2] in present) or not tid.startswith("scan-"):
            assert RESULT_PREFIX + tid in after["results"], (
                f"deleted the result of a live row: {tid}"
            )
        else:
            assert RESULT_PREFIX + tid not in after["results"], f"orphan left: {tid}"
    # the heartbeat is the owner's, not the lock's: the last one written for that owner counts
    heartbeat: dict[str, str] = {}
    for _, kind, hb in world.locks:
        if hb != "missing":
            heartbeat[kind] = hb
    for name, kind, hb in world.locks:
        if alive(kind, world) or heartbeat.get(kind) == "fresh":
            assert after["locks"].get(keys.lock(name)) == before["locks"][keys.lock(name)], (
                f"released a live owner's lock {name} ({kind}, {hb})"
            )
        else:
            assert keys.lock(name) not in after["locks"], f"leaked lock kept: {name} ({kind})"
    for sid, s in present.items():
        live_worker = alive(s["owner"], world) or not s["silent"]
        if s["status"] != "running" or live_worker:
            assert after["scans"][sid] == before["scans"][sid], f"touched scan {s}"
        else:
            assert after["scans"][sid] in (("queued", 2), ("dead", 1)), s

    again = await sweeps.run(ctx, list(sweeps.SWEEPS), dry_run=False)
    assert sum(r.found for r in again) == 0, [r.as_dict() for r in again if r.found]
