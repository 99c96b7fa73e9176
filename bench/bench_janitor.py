"""Orphan sweep: our janitor against field report 002's cache manager, on the same Redis.

1,000,000 result keys `celery-task-meta-scan-<uuid>-1` (10% whose scan row is gone, 5% of the
rest without a TTL), 900,000 scan rows, and a client doing GET/SET in a loop the whole time
(its per-call latency is what the web app would feel):

- floor: the same client alone for FLOOR_S seconds, no sweep running: its p99 / max is what
  this machine's scheduling and Redis's fsync (appendfsync always) cost a call anyway;
- busy floor: the same client for FLOOR_S seconds while one spinning process per core burns
  CPU and never touches Redis: what a machine with no idle core does to the client's tail,
  whatever the busy work is (our sweep keeps Python, PostgreSQL and Redis busy on this box);
- ours: `celery_stack_core.sweeps` orphaned-results, as the CLI runs it (JSON log lines at INFO,
  to a file): SCAN steps of JANITOR_SCAN_COUNT keys with their expiries in one Lua call, read
  ahead while the previous steps are checked with one `unnest($ids)` anti-join per table, then
  UNLINK (compare-before-delete) / EXPIRE NX in Lua calls of at most JANITOR_SCAN_COUNT keys;
- naive (report 002): `KEYS celery-task-meta-*`, then one `SELECT` per key, then one DEL of
  the orphans found ("批量删除"). Its per-key phase takes minutes at this size: it runs for
  NAIVE_BUDGET seconds and its total is projected from the measured rates (the table says so).

Figures: total time, Redis time spent on the sweep's commands (INFO commandstats, commands run
inside our scripts counted once, in the script), the longest single command (SLOWLOG: every
command over 100 µs kept), and the client's p99 / max latency during each sweep.
Each real run is checked: the orphans gone, every live row's result kept, TTLs set.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import multiprocessing
import os
import time
import uuid
from typing import Any

import redis
import redis.asyncio as aioredis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from bench.common import BenchEnv, percentile, sized, table, verdict

KEYS = int(os.environ.get("BENCH_JANITOR_KEYS", sized(1_000_000, 20_000)))
LIVE = KEYS * 9 // 10
NAIVE_BUDGET = float(os.environ.get("BENCH_JANITOR_NAIVE_BUDGET", sized(30, 3)))
FLOOR_S = sized(10.0, 1.0)
COMPARISONS = {
    "ratio_total": (
        "naive_total_s",
        "ours_total_s",
        f"orphan sweep, {KEYS:,} keys, total time: report 002 (projected) / ours",
    ),
    "ratio_client_max": (
        "naive_client_max_ms",
        "ours_client_max_ms",
        "orphan sweep, client max latency: report 002 / ours",
    ),
    "ours_over_busy_floor_client_max": (
        "ours_client_max_ms",
        "busy_floor_client_max_ms",
        "client max latency: during our sweep / with every core spinning (no Redis work)",
    ),
}
# commands our Lua scripts run: commandstats counts them again under their own names
OUR_NESTED = ("scan", "pexpiretime", "unlink", "expire")
PREFIX = "celery-task-meta-"
MEASURES = ("libs/core", "bench/bench_janitor.py")
TARGETS = {
    "ours_total_s": ("<=", 10.0, "our whole sweep, DB checks included"),
    "ours_client_max_ms": ("<=", 5.0, "the concurrent client's worst GET/SET during our sweep"),
}


def scan_id(g: int) -> uuid.UUID:
    return uuid.UUID(hashlib.md5(str(g).encode()).hexdigest())


def key(g: int) -> str:
    return f"{PREFIX}scan-{scan_id(g)}-1"


async def _seed_rows(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO scans (id, owner, domain, status) "
                "SELECT md5(g::text)::uuid, 'bench', 'example.com', 'succeeded' "
                "FROM generate_series(1, :n) AS g"
            ),
            {"n": LIVE},
        )
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE scans"))


async def _seed_keys(r: aioredis.Redis, lo: int, hi: int) -> None:
    value = '{"status": "SUCCESS", "result": null}'
    for start in range(lo, hi + 1, 10_000):
        pipe = r.pipeline(transaction=False)
        for g in range(start, min(hi, start + 9_999) + 1):
            # 5% of the live rows' results have no TTL (written before result_expires was set)
            pipe.set(key(g), value, ex=None if (g <= LIVE and g % 20 == 0) else 86400)
        await pipe.execute()


def _probe_loop(url: str, stop: Any, out: Any) -> None:
    client = redis.Redis.from_url(url)
    client.ping()
    out.put("ready")
    latencies: list[float] = []
    n = 0
    while not stop.is_set():
        t = time.perf_counter()
        if n % 2:
            client.get("bench:probe")
        else:
            client.set("bench:probe", n)
        latencies.append(time.perf_counter() - t)
        n += 1
        time.sleep(0.0005)
    out.put(latencies)


class Probe:
    """A web-app-like client in a process of its own (so our sweep's Python work cannot delay
    it through the GIL): GET and SET one key in a loop, recording each call's latency."""

    def __init__(self, url: str) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._stop = ctx.Event()
        self._out: Any = ctx.Queue()
        self._proc = ctx.Process(target=_probe_loop, args=(url, self._stop, self._out))
        self.latencies: list[float] = []

    def __enter__(self) -> Probe:
        self._proc.start()
        assert self._out.get(timeout=120) == "ready"  # connected before the timed work begins
        return self

    def __exit__(self, *_: Any) -> None:
        self._stop.set()
        self.latencies = self._out.get(timeout=60)
        self._proc.join(10)


async def _redis_cost(r: aioredis.Redis, nested: tuple[str, ...] = ()) -> tuple[float, float]:
    """(seconds Redis spent on everything but the probe's GET/SET, longest command in ms).
    `nested`: commands that ran only inside scripts, already in the script's time."""
    stats = await r.info("commandstats")
    skip = {"cmdstat_get", "cmdstat_set", "cmdstat_info"} | {f"cmdstat_{c}" for c in nested}
    busy = sum(v["usec"] for k, v in stats.items() if k not in skip)
    slow = await r.slowlog_get(-1)
    longest = max((e["duration"] for e in slow), default=0) / 1000
    for e in sorted(slow, key=lambda e: -e["duration"])[:3]:
        print(f"    {e['duration']} µs: {e['command'][:60]!r}", flush=True)
    await r.config_set("slowlog-max-len", 128)
    await r.slowlog_reset()
    return busy / 1e6, longest


async def _reset_stats(r: aioredis.Redis) -> None:
    """Zero the counters, once the server is quiet: no AOF rewrite (the seeding may have
    started one) whose fork would land in either side's figures."""
    while (await r.info("persistence"))["aof_rewrite_in_progress"]:
        await asyncio.sleep(0.2)
    await r.config_resetstat()
    await r.slowlog_reset()
    # every command over 100 µs, all of them kept: the longest is never rolled out
    await r.config_set("slowlog-log-slower-than", 100)
    await r.config_set("slowlog-max-len", 1_000_000)


def _floor(env: BenchEnv) -> dict[str, float]:
    """The same client with no sweep running: what a call costs here anyway."""
    with Probe(env.redis_url) as probe:
        time.sleep(FLOOR_S)
    return {
        "floor_client_p99_ms": percentile(probe.latencies, 99) * 1000,
        "floor_client_max_ms": max(probe.latencies) * 1000,
    }


def _spin(stop: Any) -> None:
    while not stop.is_set():
        sum(range(10_000))


def _busy_floor(env: BenchEnv) -> dict[str, float]:
    """The same client while every core is busy with work that never touches Redis."""
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    spinners = [ctx.Process(target=_spin, args=(stop,)) for _ in range(os.cpu_count() or 1)]
    for proc in spinners:
        proc.start()
    try:
        with Probe(env.redis_url) as probe:
            time.sleep(FLOOR_S)
    finally:
        stop.set()
        for proc in spinners:
            proc.join(10)
    return {
        "busy_floor_client_p99_ms": percentile(probe.latencies, 99) * 1000,
        "busy_floor_client_max_ms": max(probe.latencies) * 1000,
    }


def _json_log(env: BenchEnv) -> logging.Handler:
    """The janitor's action lines at INFO, as JSON into a file, as the CLI writes them to stdout
    (so their cost is in our figure)."""
    from celery_stack_core.logs import _Formatter

    handler = logging.FileHandler(env.work_dir / "janitor.log")
    handler.setFormatter(_Formatter("janitor"))
    logger = logging.getLogger("celery_stack.janitor")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    return handler


async def _ours(env: BenchEnv, engine: AsyncEngine, r: aioredis.Redis) -> dict[str, float]:
    from celery_stack_core import sweeps
    from celery_stack_core.sweeps.base import SweepContext

    ctx = SweepContext(r, engine, env.settings())
    await _reset_stats(r)
    handler = _json_log(env)
    try:
        with Probe(env.redis_url) as probe:
            t = time.perf_counter()
            (report,) = await sweeps.run(ctx, ["orphaned-results"], dry_run=False)
            total = time.perf_counter() - t
    finally:
        logging.getLogger("celery_stack.janitor").removeHandler(handler)
        handler.close()
    busy, longest = await _redis_cost(r, OUR_NESTED)
    logged = (env.work_dir / "janitor.log").read_text().count(PREFIX)
    assert logged == KEYS - LIVE + LIVE // 20, f"{logged} actions in the log"
    assert report.by_action["delete"] == KEYS - LIVE, report.as_dict()
    assert report.by_action["expire"] == LIVE // 20, report.as_dict()
    assert report.complete
    assert await r.exists(key(1), key(LIVE)) == 2 and not await r.exists(key(KEYS))
    assert await r.ttl(key(20)) > 0
    return {
        "ours_total_s": total,
        "ours_keys_per_s": KEYS / total,
        "ours_redis_busy_s": busy,
        "ours_longest_command_ms": longest,
        "ours_client_p99_ms": percentile(probe.latencies, 99) * 1000,
        "ours_client_max_ms": max(probe.latencies) * 1000,
    }


async def _naive(env: BenchEnv, engine: AsyncEngine, r: aioredis.Redis) -> dict[str, float]:
    """Report 002: KEYS, then a DB lookup per key (their get_orphaned_celery_tasks)."""
    import asyncpg

    from bench.common import pg_dsn

    conn = await asyncpg.connect(pg_dsn(env.database_url))
    await _reset_stats(r)
    checked = 0
    orphans: list[str] = []
    with Probe(env.redis_url) as probe:
        t = time.perf_counter()
        # report 002's client had no timeout to hit; ours would give up after 5 s of KEYS
        slow = aioredis.Redis.from_url(env.redis_url, decode_responses=True, socket_timeout=300)
        names = await slow.keys(f"{PREFIX}*")
        keys_s = time.perf_counter() - t
        for name in names:
            sid = name.removeprefix(PREFIX).removeprefix("scan-")[:36]
            if await conn.fetchval("SELECT 1 FROM scans WHERE id = $1", uuid.UUID(sid)) is None:
                orphans.append(name)
            checked += 1
            if time.perf_counter() - t > NAIVE_BUDGET:
                break
        select_s = time.perf_counter() - t - keys_s
        d = time.perf_counter()
        if orphans:
            await slow.delete(*orphans)  # their batch delete: one DEL of what was found
        del_s = time.perf_counter() - d
        elapsed = time.perf_counter() - t
        await slow.aclose()
    await conn.close()
    busy, longest = await _redis_cost(r)
    scale = len(names) / max(1, checked)
    projected = keys_s + (select_s + del_s) * scale
    return {
        "naive_keys_s": keys_s,
        "naive_total_s": projected,
        "naive_measured_s": elapsed,
        "naive_checked_keys": float(checked),
        "naive_redis_busy_s": busy,
        "naive_longest_command_ms": longest,
        "naive_client_p99_ms": percentile(probe.latencies, 99) * 1000,
        "naive_client_max_ms": max(probe.latencies) * 1000,
    }


async def _run(env: BenchEnv) -> dict[str, float]:
    from celery_stack_core.db import make_engine
    from celery_stack_core.redis_client import make_async_redis

    settings = env.settings()
    engine = make_engine(settings)
    r = make_async_redis(settings)
    figures: dict[str, float] = {}
    try:
        t = time.perf_counter()
        await _seed_rows(engine)
        await _seed_keys(r, 1, KEYS)
        print(
            f"  seeded {KEYS:,} result keys and {LIVE:,} rows in {time.perf_counter() - t:.0f}s",
            flush=True,
        )
        await _reset_stats(r)  # waits out the AOF rewrite the seeding started, if any
        figures |= _floor(env)
        figures |= _busy_floor(env)
        print(f"  floors: {figures}", flush=True)
        figures |= await _ours(env, engine, r)
        print(f"  ours: {figures}", flush=True)
        await _seed_keys(r, LIVE + 1, KEYS)  # the orphans again, for the naive design
        figures |= await _naive(env, engine, r)
    finally:
        await r.aclose()
        await engine.dispose()
    rows = [
        [
            f"client alone, no sweep ({FLOOR_S:.0f} s): the floor",
            float("nan"),
            float("nan"),
            float("nan"),
            figures["floor_client_p99_ms"],
            figures["floor_client_max_ms"],
        ],
        [
            f"client, every core spinning, no sweep ({FLOOR_S:.0f} s): the busy floor",
            float("nan"),
            float("nan"),
            float("nan"),
            figures["busy_floor_client_p99_ms"],
            figures["busy_floor_client_max_ms"],
        ],
        [
            "ours (SCAN steps read ahead + batched checks)",
            figures["ours_total_s"],
            figures["ours_redis_busy_s"],
            figures["ours_longest_command_ms"],
            figures["ours_client_p99_ms"],
            figures["ours_client_max_ms"],
        ],
        [
            "report 002 (KEYS + per-key SELECT; projected from "
            f"{int(figures['naive_checked_keys']):,} keys)",
            figures["naive_total_s"],
            figures["naive_redis_busy_s"],
            figures["naive_longest_command_ms"],
            figures["naive_client_p99_ms"],
            figures["naive_client_max_ms"],
        ],
    ]
    print(
        table(
            f"orphan sweep: {KEYS:,} result keys, {KEYS - LIVE:,} orphaned; ours "
            f"{figures['ours_keys_per_s']:,.0f} keys/s",
            [
                "design",
                "total s",
                "redis busy s",
                "longest cmd ms",
                "client p99 ms",
                "client max ms",
            ],
            rows,
        )
    )
    for key, (num, den, what) in COMPARISONS.items():
        figures[key] = figures[num] / figures[den]
        print(f"  {what}: {figures[key]:.1f}x")
    for name, (op, bound, what) in TARGETS.items():
        ok = figures[name] <= bound if op == "<=" else figures[name] >= bound
        print(f"target {name} {op} {bound} ({what}): {figures[name]:.2f} {verdict(ok)}")
    return figures


def run(env: BenchEnv) -> dict[str, float]:
    return asyncio.run(_run(env))
