"""Exactly once under kill -9 (issue 2's chaos proof).

Writers buffer view increments and count what Redis acknowledged. A flusher process is
SIGKILLed at every step of the protocol, many times; the test's own PostgreSQL is restarted
with `-m immediate`; its own Redis (AOF, appendfsync always) is kill -9'd. At quiet points:

    acknowledged == DB + live + (in-flight unless its batch is in the ledger)

and after draining, acknowledged == DB exactly, and the ledger's totals sum to the DB's views.

The flusher claims all its shards in one pipelined round trip, then applies them in two
transactions side by side (flush.LANES), reading the next shard while PostgreSQL applies the
current ones, each batch's ledger row and deltas in one statement, each transaction's ledger
figures in one last statement before its COMMIT (flush.flush_many). Every step of that order
is a kill point (flush.STEPS): "claimed" (every batch in flight, no transaction yet), the k-th
"read" or "applied" (k = 1..SHARDS at random: earlier shards applied inside still-open
transactions, later ones claimed but unread), the k-th "recorded" (a transaction written, not
committed), the k-th "committed" (one transaction committed, the other possibly still open;
none acked) and "acked". An increment whose Redis call failed is "ambiguous" (the reply was lost: it may or may not have been applied); those occur only while
Redis is being killed, and bound the result from above: acked <= DB <= acked + ambiguous.
"""

import asyncio
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import text

from celery_stack_core import buffer
from celery_stack_core.config import Settings
from celery_stack_core.db import make_engine
from celery_stack_core.migrate import upgrade
from celery_stack_core.redis_client import make_async_redis
from celery_stack_counters.flush import STEPS
from celery_stack_counters.flush_all import all_shards
from celery_stack_devstack.pytest_plugin import env_for
from celery_stack_devstack.servers import PostgresServer, RedisServer

# 30 flusher processes each pay Python start-up (5-6 s on 2 cores at load 11, ~1 s when quiet)
pytestmark = [pytest.mark.chaos, pytest.mark.timeout(900)]


async def drained(proc: subprocess.Popen, log: Path) -> int | None:
    """The drain's exit code. It starts a Python process and flushes every shard; on a machine
    loaded by the rest of the suite that took over 120 s once. Past 300 s it is stuck: dump its
    threads (faulthandler, SIGUSR1) into the log and fail with it."""
    try:
        return await asyncio.to_thread(proc.wait, 300)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGUSR1)
        await asyncio.sleep(1)
        proc.kill()
        pytest.fail("the drain did not finish in 300 s:\n" + log.read_text()[-8000:])


SHARDS = 4
POSTS = 300
KILLS_PER_STEP = 6
FLUSHER = Path(__file__).with_name("flusher.py")


class Writers:
    def __init__(self, redis, ids: list[int], n: int = 4) -> None:
        self.redis, self.ids, self.n = redis, ids, n
        self.acked: Counter[int] = Counter()
        self.ambiguous: Counter[int] = Counter()
        self.running = asyncio.Event()
        self.stopped = False
        self.in_flight = 0
        self.tasks: list[asyncio.Task] = []

    async def _write(self) -> None:
        rnd = random.Random()
        while not self.stopped:
            await self.running.wait()
            if self.stopped:
                return
            target = rnd.choice(self.ids)
            self.in_flight += 1
            try:
                await buffer.increment(self.redis, "post", "views", target, shards=SHARDS)
                self.acked[target] += 1
            except Exception:
                self.ambiguous[target] += 1
                await asyncio.sleep(0.05)
            finally:
                self.in_flight -= 1
            await asyncio.sleep(0.001)

    def start(self) -> None:
        self.running.set()
        self.tasks = [asyncio.create_task(self._write()) for _ in range(self.n)]

    async def pause(self) -> None:
        self.running.clear()
        while self.in_flight:
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.stopped = True
        self.running.set()
        await asyncio.gather(*self.tasks)


class Flusher:
    def __init__(self, env: dict[str, str], log: Path, started: list) -> None:
        self.env, self.log, self.started = env, log, started
        self.proc: subprocess.Popen | None = None

    def start(self, *args: str) -> subprocess.Popen:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, str(FLUSHER), *args],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.started.append(self.proc)
        return self.proc

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


async def state(redis, engine) -> tuple[Counter[int], Counter[int]]:
    """(what the database holds, what Redis still owes it) per post id."""
    owed: Counter[int] = Counter()
    ledger_checks = []
    for sk in all_shards(SHARDS):
        for k, v in (await redis.hgetall(sk.live)).items():
            owed[int(k)] += int(v)
        inflight = await redis.hgetall(sk.inflight)
        if inflight:
            ledger_checks.append((await redis.get(sk.batch), inflight))
    async with engine.connect() as conn:
        db = Counter({r[0]: r[1] for r in await conn.execute(text("SELECT id, views FROM posts"))})
        for batch_id, inflight in ledger_checks:
            applied = (
                await conn.execute(
                    text("SELECT 1 FROM counter_batches WHERE batch_id = CAST(:b AS uuid)"),
                    {"b": batch_id},
                )
            ).first()
            if not applied:
                for k, v in inflight.items():
                    owed[int(k)] += int(v)
    return +db, +owed


@pytest.fixture
def chaos_servers():
    base = Path(tempfile.mkdtemp(prefix="celery-stack-chaos-"))
    base.chmod(0o755)
    pg = PostgresServer(base / "pg", fsync=True).start()
    rd = RedisServer(base / "redis", appendfsync="always").start()
    yield pg, rd, base
    rd.stop()
    pg.stop("immediate")
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def flusher_procs():
    """Every flusher process the test starts; none outlives it, even when the test fails."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_exactly_once_under_kill9(chaos_servers, flusher_procs, tmp_path):
    pg, rd, _ = chaos_servers
    url = pg.create_database("chaos")
    await asyncio.to_thread(upgrade, url)
    settings = Settings(
        ENVIRONMENT="test", DATABASE_URL=url, REDIS_URL=rd.url, COUNTER_SHARDS=SHARDS
    )
    env = {**__import__("os").environ, **env_for(settings)}
    engine = make_engine(settings)
    redis = make_async_redis(settings)
    async with engine.begin() as conn:
        ids = [
            r[0]
            for r in await conn.execute(
                text(
                    "INSERT INTO posts (author_id, title) SELECT 'a', 't' FROM generate_series(1, :n) RETURNING id"
                ),
                {"n": POSTS},
            )
        ]
    flusher = Flusher(env, tmp_path / "flusher.log", flusher_procs)
    writers = Writers(redis, ids)
    writers.start()
    kills: Counter[str] = Counter()
    quiet_checks = 0

    async def quiet_point() -> None:
        nonlocal quiet_checks
        await writers.pause()
        flusher.kill9()
        db, owed = await state(redis, engine)
        assert db + owed == writers.acked, "acknowledged != DB + live + unapplied in-flight"
        quiet_checks += 1
        writers.running.set()

    # --- phase 1: the flusher is killed at every step; PostgreSQL crash-restarts -------------
    missed: list[tuple[str, int, int | None]] = []
    rounds = [s for s in STEPS for _ in range(KILLS_PER_STEP)]
    random.shuffle(rounds)
    for i, step in enumerate(rounds):
        # read/applied come once per batch (up to SHARDS a flush), recorded/committed once per
        # transaction (up to two a flush), claimed/acked once per flush
        after = random.randint(1, SHARDS if step in ("read", "applied") else 3)
        proc = flusher.start("--crash-at", step, "--crash-after", str(after))
        deadline = (
            time.monotonic() + 60
        )  # a timeout, not a timing: process start-up on 2 loaded cores
        while proc.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        if proc.poll() == -9:
            kills[step] += 1
        else:
            missed.append((step, after, proc.poll()))
        flusher.kill9()
        if i % 10 == 5:
            await asyncio.to_thread(pg.restart_immediate)
            kills["postgres -m immediate"] += 1
        if i % 6 == 0:
            await quiet_point()
    await quiet_point()
    assert all(kills[s] >= KILLS_PER_STEP - 1 for s in STEPS), (
        f"the flusher did not die at every step: {kills}; missed {missed}\n"
        + (tmp_path / "flusher.log").read_text()[-6000:]
    )

    # drain with no crashes: every acknowledged increment is in the database, once
    await writers.pause()
    drain = flusher.start("--drain")
    assert await drained(drain, tmp_path / "flusher.log") == 0
    db, owed = await state(redis, engine)
    assert not owed
    assert db == writers.acked, (
        "lost or double-applied increments after flusher kills and PG restarts"
    )
    phase1_total = sum(writers.acked.values())
    assert not writers.ambiguous  # Redis was never down in phase 1

    # --- phase 2: Redis itself is kill -9'd (AOF appendfsync always) while everything runs ---
    writers.running.set()
    flusher.start()
    for _ in range(3):
        await asyncio.sleep(2.0)
        await asyncio.to_thread(rd.restart_after_kill9)
        kills["redis kill -9"] += 1
    await asyncio.sleep(2.0)
    await writers.stop()
    flusher.kill9()
    drain = flusher.start("--drain")
    assert await drained(drain, tmp_path / "flusher.log") == 0
    db, owed = await state(redis, engine)
    assert not owed
    for i in ids:
        assert writers.acked[i] <= db[i] <= writers.acked[i] + writers.ambiguous[i], f"post {i}"
    async with engine.connect() as conn:
        ledger, views = (
            await conn.execute(
                text(
                    "SELECT (SELECT coalesce(sum(total), 0) FROM counter_batches),"
                    " (SELECT coalesce(sum(views), 0) FROM posts)"
                )
            )
        ).one()
    # Every view in PostgreSQL came through exactly one ledger row, in the same transaction:
    # a batch applied twice, or applied without its ledger row, or a ledger row whose deltas
    # were not applied, would make these differ.
    assert ledger == views, f"ledger totals {ledger} != views in posts {views}"
    print(
        f"\nchaos: {dict(kills)}; quiet checks {quiet_checks}; phase 1 acked {phase1_total}; "
        f"total acked {sum(writers.acked.values())}, ambiguous {sum(writers.ambiguous.values())}, "
        f"db {sum(db.values())}"
    )
    await redis.aclose()
    await engine.dispose()
