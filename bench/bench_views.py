"""Views durably applied per second: ours (buffer + flush) against field report 001's task per
view at its best setting, measured two ways so that neither side's sender is the limit.

- **flusher**: SENDERS processes (bench/view_sender.py) call `buffer.increment` (the API's
  ingest call: one Lua HINCRBY) as fast as they can, while a real `celery-stack-worker-counters`
  (--concurrency 2) runs `counters.flush`, sent every COUNTER_FLUSH_INTERVAL as beat does.
- **HTTP, end to end**: API_PROCS `celery-stack-api serve` processes, each under its own
  bench/loadgen.py (closed loop, CONNECTIONS keep-alive connections) for HTTP_SECONDS:
  `POST /api/v1/posts/{id}/views` with the dev user token, then the same flusher.
- **report 001 at its best**: one message per view (`update_post_view_count.delay(post_id)`)
  and a real Celery worker (bench/naive_views.py, --concurrency 2, prefetch 4) running one
  task per view (one UPDATE + COMMIT), its broker a Redis with appendfsync everysec.

Each figure is views / (first view sent -> last view committed in PostgreSQL, fsync on), and
every view must be there exactly once (more is an error, fewer a timeout).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.common import (
    ROOT,
    BenchEnv,
    Proc,
    buffered_total,
    extra_redis,
    prepare_posts,
    seed_posts,
    sized,
    start_api,
    start_celery_worker,
    start_counters_worker,
    table,
    total_views,
    view_every_post,
    wait_views,
)

POSTS = 1_000
SENDERS = sized(4, 2)
VIEWS_PER_SENDER = sized(25_000, 3_000)
API_PROCS = sized(2, 1)
CONNECTIONS = 32
HTTP_SECONDS = sized(10.0, 3.0)
NAIVE_VIEWS = sized(3_000, 300)
CONCURRENCY = 2
TIMEOUT = 300.0
MEASURES = ("services/worker-counters", "services/api", "libs/core", "bench/bench_views.py")
TARGETS = {
    "flusher_over_report001": (">=", 10.0, "views applied/s, senders + flusher / report 001"),
    "http_over_report001": (">=", 10.0, "views applied/s through HTTP / report 001"),
}
COMPARISONS = {
    "flusher_over_report001": (
        "ours_flusher_applied_per_s",
        "report001_applied_per_s",
        f"views applied/s: {SENDERS} sender processes + flusher / report 001 (best setting)",
    ),
    "http_over_report001": (
        "ours_http_applied_per_s",
        "report001_applied_per_s",
        f"views applied/s: HTTP, {API_PROCS} API process(es) + flusher / report 001",
    ),
}


class Flusher:
    """A real counters worker, and `counters.flush` sent every interval as beat sends it."""

    def __init__(self, env: BenchEnv) -> None:
        from celery_stack_core.celery_app import make_celery

        self.env = env
        self.settings = env.settings()
        self.worker: Proc = start_counters_worker(env, CONCURRENCY)
        self.beat = make_celery(self.settings, "bench-beat")
        self.stop = asyncio.Event()

    async def warm(self) -> None:
        """The worker is up and has applied every buffered view (not timed); then the table
        is zeroed."""
        from celery_stack_core import buffer
        from celery_stack_core.redis_client import make_async_redis

        redis = make_async_redis(self.settings)
        await buffer.increment(redis, "post", "views", 1, shards=self.settings.counters.shards)
        await redis.aclose()
        deadline = time.monotonic() + 120
        while await total_views(self.env) < 1 or await buffered_total(self.env):
            self.worker.check()
            if time.monotonic() > deadline:
                raise TimeoutError(f"worker never flushed:\n{self.worker.output()[-3000:]}")
            self.beat.send_task("counters.flush")
            await asyncio.sleep(0.5)
        await prepare_posts(self.env, zero=True)

    async def tick(self) -> None:
        while not self.stop.is_set():
            self.beat.send_task("counters.flush")
            await asyncio.sleep(self.settings.counters.flush_interval)

    def close(self) -> None:
        self.stop.set()
        self.beat.close()
        self.worker.stop()


def _run_all(argvs: list[list[str]], env: BenchEnv, timeout: float) -> None:
    procs = [subprocess.Popen(a, cwd=ROOT, env=env.child_env()) for a in argvs]
    for p in procs:
        if p.wait(timeout=timeout):
            raise RuntimeError(f"{p.args} exited with {p.returncode}")


async def _flusher(env: BenchEnv) -> dict[str, float]:
    flusher = Flusher(env)
    try:
        await flusher.warm()
        outs = [env.work_dir / f"sender-{i}.json" for i in range(SENDERS)]
        argvs = [
            [
                env.python,
                "-m",
                "bench.view_sender",
                "--count",
                str(VIEWS_PER_SENDER),
                "--posts",
                str(POSTS),
                "--seed",
                str(i),
                "--out",
                str(out),
            ]
            for i, out in enumerate(outs)
        ]
        ticker = asyncio.create_task(flusher.tick())
        await asyncio.to_thread(_run_all, argvs, env, TIMEOUT)
        sent_at = time.time()
        total = SENDERS * VIEWS_PER_SENDER
        done = await wait_views(env, total, TIMEOUT, flusher.worker)
        flusher.stop.set()
        await ticker
        per_sender = [json.loads(o.read_text()) for o in outs]
        # from the first view sent (process start-up is not the flusher's)
        started = min(p["started_epoch"] for p in per_sender)
        return {
            "views": float(total),
            "applied_per_s": total / (done - started),
            "sent_per_s": total / (sent_at - started),  # incl. process exit: a lower bound
            "sent_per_s_per_sender": sum(p["sent"] / p["seconds"] for p in per_sender) / SENDERS,
            "tail_s": done - sent_at,
        }
    finally:
        flusher.close()


def _loadgen(env: BenchEnv, base: str, out: Path) -> list[str]:
    port = base.rsplit(":", 1)[1]
    return [
        env.python,
        "-m",
        "bench.loadgen",
        "--port",
        port,
        "--path-template",
        "/api/v1/posts/{id}/views",
        "--ids",
        str(POSTS),
        "--connections",
        str(CONNECTIONS),
        "--duration",
        str(HTTP_SECONDS),
        "--warmup",
        "0",
        "--header",
        "Authorization: Bearer dev-user-token",
        "--out",
        str(out),
    ]


async def _http(env: BenchEnv) -> dict[str, float]:
    apis = [start_api(env, f"api{i}") for i in range(API_PROCS)]
    for _, base in apis:
        view_every_post(base, POSTS)  # steady state: the existence cache is full
    flusher = Flusher(env)
    try:
        await flusher.warm()
        outs = [env.work_dir / f"http-{i}.json" for i in range(API_PROCS)]
        ticker = asyncio.create_task(flusher.tick())
        await asyncio.to_thread(
            _run_all,
            [_loadgen(env, base, o) for (_, base), o in zip(apis, outs, strict=True)],
            env,
            HTTP_SECONDS + 60,
        )
        sent_at = time.time()
        started = min(json.loads(o.read_text())["started_epoch"] for o in outs)
        answered = sum(json.loads(o.read_text())["statuses"].get("202", 0) for o in outs)
        bad = {
            s: n
            for o in outs
            for s, n in json.loads(o.read_text())["statuses"].items()
            if s != "202"
        }
        if bad:
            raise AssertionError(f"non-202 answers: {bad}")
        # Requests in flight when a generator stopped are counted in Redis, not by it, and
        # their handlers may still run: wait until nothing is buffered and nothing more comes.
        await asyncio.sleep(0.5)
        while True:
            while await buffered_total(env):
                flusher.worker.check()
                if time.time() - sent_at > TIMEOUT:
                    raise TimeoutError("buffers never drained")
                await asyncio.sleep(0.05)
            applied, done = await total_views(env), time.time()
            await asyncio.sleep(flusher.settings.counters.flush_interval)
            if not await buffered_total(env) and await total_views(env) == applied:
                break
        if not answered <= applied <= answered + API_PROCS * CONNECTIONS:
            raise AssertionError(f"{applied} views applied for {answered} 202s")
        flusher.stop.set()
        await ticker
        return {
            "views": float(applied),
            "applied_per_s": applied / (done - started),
            "sent_per_s": answered / (sent_at - started),
            "tail_s": done - sent_at,
        }
    finally:
        flusher.close()
        for proc, _ in apis:
            proc.stop()


async def _report001(env: BenchEnv, broker: str) -> dict[str, float]:
    from celery import Celery

    from bench.naive_views import QUEUE, TASK

    worker = start_celery_worker(
        env, "bench.naive_views", QUEUE, concurrency=CONCURRENCY, prefetch=4, REDIS_URL=broker
    )
    # The web process's side: one message per view (`update_post_view_count.delay(post_id)`).
    client = Celery("naive-client", broker=broker, set_as_current=False)
    client.conf.update(task_serializer="json", accept_content=["json"])
    try:
        client.send_task(TASK, (1,), queue=QUEUE)
        await wait_views(env, 1, 120, worker)
        await prepare_posts(env, zero=True)
        import random

        rng = random.Random(2)
        ids = [rng.randint(1, POSTS) for _ in range(NAIVE_VIEWS)]
        started = time.time()
        with client.producer_or_acquire() as producer:  # inline per request, as the report
            for target_id in ids:
                client.send_task(TASK, (target_id,), queue=QUEUE, producer=producer)
        sent_at = time.time()
        done = await wait_views(env, NAIVE_VIEWS, TIMEOUT, worker)
        return {
            "views": float(NAIVE_VIEWS),
            "applied_per_s": NAIVE_VIEWS / (done - started),
            "sent_per_s": NAIVE_VIEWS / (sent_at - started),
            "tail_s": done - sent_at,
        }
    finally:
        worker.stop()
        client.close()


def run(env: BenchEnv) -> dict[str, float]:
    asyncio.run(seed_posts(env, POSTS))
    results: dict[str, dict[str, float]] = {}
    results["ours_flusher"] = asyncio.run(_flusher(env))
    print(f"  flusher: {results['ours_flusher']['applied_per_s']:,.0f} views/s", flush=True)
    asyncio.run(prepare_posts(env, zero=True))
    results["ours_http"] = asyncio.run(_http(env))
    print(f"  http: {results['ours_http']['applied_per_s']:,.0f} views/s", flush=True)
    asyncio.run(prepare_posts(env, zero=True))
    with extra_redis(env, "everysec") as broker:
        results["report001"] = asyncio.run(_report001(env, broker))
    print(f"  report 001: {results['report001']['applied_per_s']:,.0f} views/s", flush=True)
    figures = {f"{side}_{k}": v for side, r in results.items() for k, v in r.items()}
    for key, (num, den, _) in COMPARISONS.items():
        figures[key] = figures[num] / figures[den]
    rows: list[list[Any]] = [
        [label, f"{int(r['views']):,}", r["sent_per_s"], r["tail_s"], r["applied_per_s"]]
        for label, r in (
            (f"ours: {SENDERS} sender processes + flusher", results["ours_flusher"]),
            (f"ours: HTTP, {API_PROCS} API process(es) + flusher", results["ours_http"]),
            ("report 001: task per view, prefetch 4, everysec", results["report001"]),
        )
    ]
    print(
        table(
            f"views durably applied ({POSTS:,} posts; workers --concurrency {CONCURRENCY})",
            ["design", "views", "sent/s", "tail s", "applied/s"],
            rows,
        )
    )
    return figures
