"""Idle memory of the API and of the counters worker, started as the chart starts them.

- api: `celery-stack-api serve` (one uvicorn process), after startup and a few requests
  (health, a view, a count read) so its imports and pools are what a serving process has.
- worker: `celery-stack-worker-counters --concurrency 2` (the local stack's and the chart's
  default: one child per core), after it has run `counters.flush` so each child has imported
  its task code and opened its pools. The figure is the parent plus every descendant (the
  prefork children).

Summed RSS is the target's figure. It counts pages shared by fork once per process, so it
overstates what the tree costs; PSS (shared pages split between sharers) is printed beside it
and is what the processes really take from the node.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from typing import Any

from bench.common import (
    BenchEnv,
    http_ok,
    seed_posts,
    start_api,
    start_counters_worker,
    table,
    total_views,
    tree_memory,
    verdict,
)

TARGET_API_MB = 150.0
TARGET_WORKER_MB = 200.0
CONCURRENCY = 2
SETTLE = 5.0  # seconds idle before measuring
MEASURES = ("services/api", "services/worker-counters", "libs/core", "bench/bench_rss.py")
TARGETS = {
    "api_rss_mb": ("<=", TARGET_API_MB, "idle RSS of the API process (MB)"),
    "worker_rss_mb": ("<=", TARGET_WORKER_MB, "idle RSS, counters worker + 2 children, summed"),
    "worker_pss_mb": ("<=", TARGET_WORKER_MB, "idle PSS, counters worker + 2 children, summed"),
}


def _post(url: str, token: str) -> int:
    req = urllib.request.Request(
        url, method="POST", data=b"", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        return int(resp.status)


def _get(url: str, token: str) -> int:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return int(resp.status)


def _api(env: BenchEnv) -> dict[str, float]:
    api, base = start_api(env)
    try:
        token = "dev-user-token"
        for _ in range(20):
            assert _post(f"{base}/api/v1/posts/1/views", token) == 202
            assert _get(f"{base}/api/v1/posts/1/counts", token) == 200
        assert http_ok(f"{base}/readyz")
        assert http_ok(f"{base}/metrics")
        time.sleep(SETTLE)
        return tree_memory(api.pid)
    finally:
        api.stop()


def _worker(env: BenchEnv) -> dict[str, float]:
    from celery_stack_core.celery_app import make_celery

    worker = start_counters_worker(env, CONCURRENCY)
    beat = make_celery(env.settings(), "bench-beat")
    try:
        # Both children run a flush (one at a time, prefetch 1) before we measure.
        deadline = time.monotonic() + 120
        while asyncio.run(total_views(env)) < 20:
            worker.check()
            if time.monotonic() > deadline:
                raise TimeoutError("the worker never flushed the views")
            for _ in range(CONCURRENCY):
                beat.send_task("counters.flush")
            time.sleep(0.5)
        for _ in range(4 * CONCURRENCY):
            beat.send_task("counters.flush")
        time.sleep(SETTLE)
        mem = tree_memory(worker.pid)
        if mem["processes"] != CONCURRENCY + 1:
            raise AssertionError(f"expected {CONCURRENCY + 1} worker processes, got {mem}")
        return mem
    finally:
        beat.close()
        worker.stop()


def run(env: BenchEnv) -> dict[str, float]:
    asyncio.run(seed_posts(env, 1))
    api = _api(env)  # its 20 views stay buffered for the worker to flush
    worker = _worker(env)
    rows: list[list[Any]] = [
        [
            "api (1 process)",
            int(api["processes"]),
            api["rss"],
            api["pss"],
            api["uss"],
            api["largest_rss"],
            f"<= {TARGET_API_MB:.0f}",
            verdict(api["rss"] <= TARGET_API_MB),
        ],
        [
            f"worker-counters (parent + {CONCURRENCY} children)",
            int(worker["processes"]),
            worker["rss"],
            worker["pss"],
            worker["uss"],
            worker["largest_rss"],
            f"<= {TARGET_WORKER_MB:.0f}",
            verdict(worker["rss"] <= TARGET_WORKER_MB),
        ],
    ]
    print(
        table(
            "idle memory (MB; summed over the process tree; the target applies to RSS)",
            ["service", "procs", "RSS", "PSS", "USS", "largest 1 proc RSS", "target", "RSS"],
            rows,
        )
    )
    return {
        "api_rss_mb": api["rss"],
        "api_pss_mb": api["pss"],
        "worker_rss_mb": worker["rss"],
        "worker_pss_mb": worker["pss"],
        "worker_largest_process_rss_mb": worker["largest_rss"],
        "worker_processes": worker["processes"],
    }
