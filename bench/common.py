"""What every benchmark shares: throwaway servers, settings for child processes, tables, timing.

`BenchEnv` is the contract between `python -m bench` and each `bench/bench_<name>.py`:
a module exposes `run(env: BenchEnv) -> dict[str, float]`, prints its own table (ours vs
naive, ratio) and returns its figures. The servers are our own, started for this run only:

- PostgreSQL with `fsync=on` and `synchronous_commit=on` (what production runs: a commit is
  on disk when it returns, so "durably applied" means what it says);
- Redis with AOF and `appendfsync always`, as DESIGN "Counters" requires of the counters Redis
  (every acknowledged increment is on disk before its reply).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import psutil

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"


@dataclass
class BenchEnv:
    database_url: str  # postgresql+asyncpg://... of a fresh, migrated database
    redis_url: str  # redis://... of our own Redis (AOF, appendfsync always)
    python: str  # the venv's python
    work_dir: Path  # scratch space for logs and data of this run
    _stop: list[Callable[[], None]] = field(default_factory=list, repr=False)

    # --- settings ------------------------------------------------------------------------------
    def env_vars(self, **overrides: Any) -> dict[str, str]:
        """The environment variables (the settings' documented names) of this run's servers."""
        base: dict[str, Any] = {
            "ENVIRONMENT": "test",  # the dev tokens are accepted
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "METRICS_PORT": 0,
            "LOG_LEVEL": "WARNING",
        }
        base.update(overrides)
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in base.items()}

    def settings(self, **overrides: Any) -> Any:
        """Settings for code running in this process, read from the same variables as a child's
        (so nesting of the settings class does not matter here)."""
        from celery_stack_core.config import Settings

        saved = dict(os.environ)
        try:
            os.environ.update(self.env_vars(**overrides))
            return Settings()
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def child_env(self, **overrides: Any) -> dict[str, str]:
        """Environment for a child process (a console script of the venv)."""
        out = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "PROMETHEUS"))}
        out.update(self.env_vars(**overrides))
        out["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), out.get("PYTHONPATH")]))
        return out

    def bin(self, name: str) -> str:
        """A console script of the venv (celery-stack-api, celery-stack-worker-counters, ...)."""
        return str(Path(self.python).parent / name)

    # --- processes -----------------------------------------------------------------------------
    def start(self, name: str, argv: Sequence[str], env: dict[str, str]) -> Proc:
        """Start a child in its own session (its whole tree is stopped with it), log to a file."""
        log = self.work_dir / f"{name}-{secrets.token_hex(3)}.log"
        with open(log, "wb") as out:
            popen = subprocess.Popen(
                list(argv),
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=self.work_dir,
            )
        proc = Proc(name, popen, log)
        self._stop.append(proc.stop)
        return proc

    # --- data ----------------------------------------------------------------------------------
    def reset(self) -> None:
        """Empty Redis and every table but alembic's, so each bench starts from nothing."""
        asyncio.run(self._reset())

    async def _reset(self) -> None:
        import asyncpg
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(self.redis_url)
        await r.flushdb()
        await r.aclose()
        conn = await asyncpg.connect(pg_dsn(self.database_url))
        try:
            tables = [
                row["tablename"]
                for row in await conn.fetch(
                    "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                    "AND tablename <> 'alembic_version'"
                )
            ]
            if tables:
                await conn.execute(
                    f"TRUNCATE {', '.join(map(quote_ident, tables))} RESTART IDENTITY CASCADE"
                )
            await conn.execute("VACUUM ANALYZE")
        finally:
            await conn.close()

    def close(self) -> None:
        while self._stop:
            with contextlib.suppress(Exception):
                self._stop.pop()()


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.popen.poll() is None

    def check(self) -> None:
        """Raise with the tail of its log if the process has exited."""
        if self.popen.poll() is not None:
            raise ProcessExited(
                f"{self.name} exited ({self.popen.returncode}):\n{self.output()[-3000:]}"
            )

    def stop(self, timeout: float = 30) -> None:
        if self.popen.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def pg_dsn(url: str) -> str:
    """The asyncpg/libpq form of a SQLAlchemy URL."""
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


@contextlib.contextmanager
def bench_env() -> Iterator[BenchEnv]:
    """Start PostgreSQL and Redis for this run, make and migrate a fresh database."""
    from celery_stack_core.migrate import upgrade
    from celery_stack_devstack.servers import PostgresServer, RedisServer

    work = Path(tempfile.mkdtemp(prefix="celery-stack-bench-"))
    os.chmod(work, 0o755)
    pg = PostgresServer(work / "pg", fsync=True)
    rd = RedisServer(work / "redis", appendfsync="always")
    env: BenchEnv | None = None
    try:
        pg.start()
        rd.start()
        db_url = pg.create_database("cs_bench")
        upgrade(db_url)
        env = BenchEnv(db_url, rd.url, sys.executable, work)
        yield env
    finally:
        if env is not None:
            env.close()
        rd.stop()
        pg.stop("fast")
        shutil.rmtree(work, ignore_errors=True)


# --- helpers for bench modules ------------------------------------------------------------------
class ProcessExited(RuntimeError):
    """A process a bench depends on has exited: no point waiting any longer."""


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll until `check()`; returns the seconds it took. Raises on timeout with the last error
    the check raised (a server not up yet refuses connections: that is what we wait out)."""
    start = time.monotonic()
    last: Exception | None = None
    while True:
        try:
            if check():
                return time.monotonic() - start
        except ProcessExited:
            raise
        except Exception as exc:
            last = exc
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what} not reached in {timeout}s (last error: {last!r})")
        time.sleep(interval)


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return bool(resp.status == 200)


def tree_memory(pid: int) -> dict[str, float]:
    """RSS, PSS and USS in MB of a process and all its descendants, summed over the tree.

    RSS summed over a prefork tree counts pages shared by fork (copy-on-write) once per
    process, so it overstates the real footprint; PSS splits shared pages between sharers
    and sums to what the tree really costs; USS is what killing the tree would free.
    """
    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    rss = pss = uss = largest = 0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            info = p.memory_full_info()
            rss += info.rss
            pss += getattr(info, "pss", 0)
            uss += getattr(info, "uss", 0)
            largest = max(largest, info.rss)
    mb = 1024 * 1024
    return {
        "processes": len(procs),
        "rss": rss / mb,
        "pss": pss / mb,
        "uss": uss / mb,
        "largest_rss": largest / mb,
    }


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [list(header), *[[fmt(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = [title, "-" * len(title)]
    for n, row in enumerate(cells):
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def verdict(ok: bool) -> str:  # noqa: FBT001 - the bool is what it formats, not a mode
    return "met" if ok else "MISSED"


def machine() -> dict[str, Any]:
    freq = psutil.cpu_freq()
    return {
        "cpus": os.cpu_count(),
        "cpu_mhz": round(freq.current) if freq else None,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": sys.version.split()[0],
        "load_1m": round(os.getloadavg()[0], 2),
    }


def quick() -> bool:
    """BENCH_QUICK=1 (`python -m bench --quick`): small sizes, to check that a bench runs."""
    return os.environ.get("BENCH_QUICK", "") not in ("", "0")


def sized(full: Any, small: Any) -> Any:
    return small if quick() else full


# --- data: one place for seeding and reading what the benches count ------------------------------
async def seed_posts(env: BenchEnv, n: int) -> None:
    """Posts 1..n (ids from a fresh sequence), VACUUM ANALYZEd."""
    conn = await asyncpg.connect(pg_dsn(env.database_url))
    try:
        # generate_series is the point: n rows in one statement
        await conn.execute(
            "INSERT INTO posts (author_id, title) "
            "SELECT 'bench', 'post ' || g FROM generate_series(1, $1::int) AS g",
            n,
        )
        await conn.execute("VACUUM ANALYZE posts")
    finally:
        await conn.close()


async def total_views(env: BenchEnv) -> int:
    conn = await asyncpg.connect(pg_dsn(env.database_url))
    try:
        return int(await conn.fetchval("SELECT coalesce(sum(views), 0) FROM posts"))
    finally:
        await conn.close()


async def prepare_posts(env: BenchEnv, *, zero: bool = False) -> None:
    """Every timed run starts from the same table state: the steady state autovacuum keeps
    (dead versions of earlier runs pruned), not the bloat of the previous run."""
    conn = await asyncpg.connect(pg_dsn(env.database_url))
    try:
        if zero:
            await conn.execute("UPDATE posts SET views = 0")
        await conn.execute("VACUUM ANALYZE posts")
        await conn.execute("VACUUM ANALYZE counter_batches")
        await conn.execute("CHECKPOINT")
    finally:
        await conn.close()


async def wait_views(
    env: BenchEnv, expected: int, timeout: float, proc: Proc | None = None
) -> float:
    """Poll until PostgreSQL's committed total reaches `expected` (more is an error); returns
    the time (epoch seconds, comparable across processes) at which it was seen."""
    conn = await asyncpg.connect(pg_dsn(env.database_url))
    deadline = time.monotonic() + timeout
    try:
        while True:
            now = time.time()
            seen = int(await conn.fetchval("SELECT coalesce(sum(views), 0) FROM posts"))
            if seen >= expected:
                if seen > expected:
                    raise AssertionError(f"{seen} views applied, only {expected} sent")
                return now
            if proc is not None:
                proc.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"only {seen} of {expected} views applied after {timeout}s")
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def load_live_buffers(redis: Any, deltas: dict[int, int], shards: int) -> None:
    """What ingest leaves behind: the deltas in the live shard hashes (HINCRBY), pipelined."""
    from celery_stack_core import keys

    now_ms = int(time.time() * 1000)
    async with redis.pipeline(transaction=False) as pipe:
        for n, (target_id, delta) in enumerate(deltas.items(), 1):
            sk = keys.ShardKeys("post", "views", keys.shard_of(target_id, shards))
            pipe.hincrby(sk.live, str(target_id), delta)
            pipe.set(sk.live_since, now_ms, nx=True)
            if n % 5000 == 0:
                await pipe.execute()
        await pipe.execute()


async def buffered_total(env: BenchEnv) -> int:
    """Increments still in our Redis buffers (live + in-flight hashes)."""
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(env.redis_url, decode_responses=True)
    total = 0
    try:
        async for key in r.scan_iter(match="cs:cnt:*", count=1000):
            if key.endswith((":live", ":inflight")):
                total += sum(int(v) for v in await r.hvals(key))
    finally:
        await r.aclose()
    return total


def view_every_post(base: str, posts: int, token: str = "dev-user-token") -> None:
    """One view of each post 1..posts through an API: fills its existence cache, as in an API
    that has been serving for a while (the bench then measures the steady state)."""
    import httpx

    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as client:
        for i in range(1, posts + 1):
            client.post(f"/api/v1/posts/{i}/views", timeout=10).raise_for_status()


# --- processes every bench starts the same way --------------------------------------------------
def start_api(env: BenchEnv, name: str = "api", **overrides: Any) -> tuple[Proc, str]:
    """One `celery-stack-api serve` process (one uvicorn worker, as the chart runs a replica)."""
    from celery_stack_devstack.servers import free_port

    port = free_port()
    proc = env.start(
        name,
        [env.bin("celery-stack-api"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env.child_env(**overrides),
    )
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: proc.check() or http_ok(f"{base}/healthz"), 60, f"{name} /healthz")
    return proc, base


def start_counters_worker(env: BenchEnv, concurrency: int, **overrides: Any) -> Proc:
    run = env.work_dir / f"worker-counters-{secrets.token_hex(3)}"
    run.mkdir()
    return env.start(
        "worker-counters",
        [env.bin("celery-stack-worker-counters"), "--concurrency", str(concurrency)],
        env.child_env(
            PROMETHEUS_MULTIPROC_DIR=str(run / "prometheus"),
            WORKER_HEARTBEAT_FILE=str(run / "alive"),
            **overrides,
        ),
    )


def start_celery_worker(
    env: BenchEnv, app: str, queue: str, *, concurrency: int, prefetch: int = 4, **overrides: Any
) -> Proc:
    """A plain `celery worker` of a field report's app in bench/ (Celery's defaults otherwise)."""
    return env.start(
        f"worker-{queue}",
        [
            env.python,
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            "-Q",
            queue,
            "--concurrency",
            str(concurrency),
            "--prefetch-multiplier",
            str(prefetch),
            "--loglevel",
            "WARNING",
            "--without-gossip",
            "--without-mingle",
        ],
        env.child_env(**overrides),
    )


@contextlib.contextmanager
def extra_redis(env: BenchEnv, appendfsync: str) -> Iterator[str]:
    """Another throwaway Redis (AOF with the given fsync policy) for the duration."""
    from celery_stack_devstack.servers import RedisServer

    server = RedisServer(
        env.work_dir / f"redis-{appendfsync}-{secrets.token_hex(3)}", appendfsync=appendfsync
    )
    server.start()
    try:
        yield server.url
    finally:
        server.stop()
