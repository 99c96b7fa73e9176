"""View ingest into ONE API process: against a bare ASGI endpoint, the bulk endpoint, and
the p99 at a fixed rate with appendfsync always and everysec.

Load comes from bench/loadgen.py (asyncio, keep-alive, no pipelining) in LOADGEN_PROCS
processes of their own; random ids of 1,000 existing posts, dev user token. Runs, each after a
warm-up that fills the existence cache:

- **ours vs bare, same run**: `celery-stack-api serve` (one uvicorn process, auth on, as the
  chart runs a replica) and bench/bare_asgi.py (the same Lua HINCRBY behind a bare ASGI
  callable under the same uvicorn options), closed loop with CONNECTIONS connections, in the
  order ours, bare, bare, ours (DURATION/2 each) so drift in the machine's load hits both.
  Beside req/s, each server's CPU time per request: on a shared machine the rate is CPU per
  request x the share of a core the process got, and only the first is the code's.
- **bulk**: `POST /api/v1/views:batch` with BATCH_ITEMS items `{"target":"post","id":..,
  "count":1}` per request, closed loop; increments/s = items x requests / seconds. When the
  endpoint is not there (404/405) the figure is "not available".
- **fsync**: open loop at OPEN_RATE req/s (latency from each request's scheduled time, so a
  stall cannot hide its queue) with Redis appendfsync always, then everysec; Redis's latency
  monitor records the main-thread stalls (aof-fsync-always: an fsync that held every reply).

Afterwards the increments buffered in Redis must equal what the generators counted as
accepted (plus requests in flight when a generator stopped): a fast endpoint that drops
views cannot score.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import redis

from bench.common import (
    ROOT,
    BenchEnv,
    Proc,
    buffered_total,
    seed_posts,
    sized,
    start_api,
    table,
    view_every_post,
    wait_for,
)
from celery_stack_devstack.servers import free_port

POSTS = 1_000
CONNECTIONS = 32
LOADGEN_PROCS = 2  # one Python generator alone has no headroom on a busy core
DURATION = sized(10.0, 2.0)
WARMUP = sized(3.0, 1.0)
OPEN_RATE = sized(2_500.0, 300.0)
BATCH_ITEMS = sized(1_000, 100)
BATCH_CONNECTIONS = 8
STALL_MS = 10
TOKEN = "dev-user-token"  # the documented local-only token; ENVIRONMENT=test accepts it
VIEW_PATH = "/api/v1/posts/{id}/views"
BATCH_PATH = "/api/v1/views:batch"
MEASURES = ("services/api", "libs/core", "bench/bench_ingest.py", "bench/bare_asgi.py")
TARGETS = {
    "ours_over_bare": (">=", 0.6, "view ingest: one API process / bare ASGI endpoint (req/s)"),
    "ours_rps": (">=", 2_500, "view ingest req/s, one API process"),
    "bulk_increments_per_s": (">=", 200_000, "bulk ingest increments/s, one API process"),
    "always_p99_ms": ("<=", 25.0, f"p99 ms at {OPEN_RATE:,.0f} req/s, appendfsync always"),
}
COMPARISONS = {
    "ours_over_bare": ("ours_rps", "bare_rps", "view ingest req/s: one API process / bare ASGI"),
    "ours_over_bare_cpu": (
        "bare_cpu_ms_per_request",
        "ours_cpu_ms_per_request",
        "view ingest CPU per request: bare / ours (load-independent)",
    ),
    "always_over_everysec_p99": (
        "always_p99_ms",
        "everysec_p99_ms",
        f"p99 at {OPEN_RATE:,.0f} req/s: appendfsync always / everysec",
    ),
}


def _loadgen(  # noqa: PLR0913 - bench/loadgen.py's options, keyword-only past the third
    env: BenchEnv,
    port: int,
    seconds: float,
    *,
    connections: int = CONNECTIONS,
    rate: float = 0.0,
    path: str = VIEW_PATH,
    body: Path | None = None,
) -> dict[str, Any]:
    """bench/loadgen.py in LOADGEN_PROCS processes sharing the connections and the rate."""
    argv = [
        env.python,
        "-m",
        "bench.loadgen",
        "--port",
        str(port),
        "--path-template",
        path,
        "--ids",
        str(POSTS),
        "--connections",
        str(connections // LOADGEN_PROCS),
        "--duration",
        str(seconds),
        "--warmup",
        "0",
        "--rate",
        str(rate / LOADGEN_PROCS),
        "--dump",
        "--header",
        f"Authorization: Bearer {TOKEN}",
        *(["--body-file", str(body)] if body else []),
    ]
    outs = [env.work_dir / f"loadgen-{n}.json" for n in range(LOADGEN_PROCS)]
    running = [subprocess.Popen([*argv, "--out", str(out)], cwd=ROOT) for out in outs]
    for proc in running:
        if proc.wait(timeout=seconds + 60):
            raise RuntimeError(f"loadgen exited with {proc.returncode}")
    parts = [json.loads(out.read_text()) for out in outs]
    latencies = sorted(x for part in parts for x in part["latencies_ms"])
    statuses: dict[str, int] = {}
    for part in parts:
        for status, n in part["statuses"].items():
            statuses[status] = statuses.get(status, 0) + n
    bad = {s: n for s, n in statuses.items() if not s.startswith("2")}
    if bad:
        raise AssertionError(f"{path}: non-2xx answers {bad}")

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q / 100 * len(latencies)))]

    return {
        "requests": len(latencies),
        "rps": len(latencies) / seconds,
        "p50_ms": pct(50),
        "p99_ms": pct(99),
    }


def _cpu(pid: int) -> float:
    return float(sum(psutil.Process(pid).cpu_times()[:2]))


def _closed(env: BenchEnv, servers: dict[str, tuple[Proc, int]]) -> dict[str, float]:
    """ours, bare, bare, ours: DURATION/2 each, summed per server."""
    acc = {name: {"requests": 0.0, "seconds": 0.0, "cpu": 0.0, "p99": 0.0} for name in servers}
    for name in ("ours", "bare", "bare", "ours"):
        proc, port = servers[name]
        cpu0 = _cpu(proc.pid)
        res = _loadgen(env, port, DURATION / 2)
        a = acc[name]
        a["cpu"] += _cpu(proc.pid) - cpu0
        a["requests"] += res["requests"]
        a["seconds"] += DURATION / 2
        a["p99"] = max(a["p99"], res["p99_ms"])
        time.sleep(0.5)
    out: dict[str, float] = {}
    for name, a in acc.items():
        out[f"{name}_rps"] = a["requests"] / a["seconds"]
        out[f"{name}_cpu_ms_per_request"] = 1000 * a["cpu"] / max(1.0, a["requests"])
        out[f"{name}_core_share"] = a["cpu"] / a["seconds"]
        out[f"{name}_closed_p99_ms"] = a["p99"]
        out[f"{name}_requests"] = a["requests"]
    return out


def _bulk(env: BenchEnv, base: str, port: int) -> dict[str, float]:
    import httpx

    probe = httpx.post(
        base + BATCH_PATH,
        json={"items": [{"target": "post", "id": 1, "count": 1}]},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    if probe.status_code in (404, 405):
        print(f"  {BATCH_PATH}: {probe.status_code}, bulk ingest not available", flush=True)
        return {"bulk_increments_per_s": float("nan"), "bulk_increments": 0.0}
    probe.raise_for_status()
    body = env.work_dir / "batch.json"
    items = [{"target": "post", "id": 1 + i % POSTS, "count": 1} for i in range(BATCH_ITEMS)]
    body.write_text(json.dumps({"items": items}))
    res = _loadgen(env, port, DURATION, connections=BATCH_CONNECTIONS, path=BATCH_PATH, body=body)
    return {
        "bulk_increments_per_s": res["rps"] * BATCH_ITEMS,
        "bulk_requests_per_s": res["rps"],
        "bulk_p99_ms": res["p99_ms"],
        "bulk_items_per_request": float(BATCH_ITEMS),
        "bulk_increments": float(res["requests"] * BATCH_ITEMS + 1),
    }


def _stalls(monitor: redis.Redis) -> tuple[int, int]:
    """Seconds with an aof-fsync-always stall >= STALL_MS, and the worst one in ms."""
    history = monitor.execute_command("LATENCY", "HISTORY", "aof-fsync-always") or []
    return len(history), max((int(ms) for _, ms in history), default=0)


def _fsync(env: BenchEnv, port: int) -> dict[str, float]:
    monitor = redis.Redis.from_url(env.redis_url, decode_responses=True)
    out: dict[str, float] = {}
    try:
        monitor.config_set("latency-monitor-threshold", STALL_MS)
        for policy in ("always", "everysec"):
            monitor.config_set("appendfsync", policy)
            monitor.execute_command("LATENCY", "RESET")
            res = _loadgen(env, port, DURATION, connections=64, rate=OPEN_RATE)
            stalls, worst = _stalls(monitor)
            out.update(
                {
                    f"{policy}_rps": res["rps"],
                    f"{policy}_p50_ms": res["p50_ms"],
                    f"{policy}_p99_ms": res["p99_ms"],
                    f"{policy}_requests": float(res["requests"]),
                    f"{policy}_fsync_stall_seconds": float(stalls),
                    f"{policy}_fsync_worst_stall_ms": float(worst),
                }
            )
            time.sleep(0.5)
    finally:
        monitor.config_set("appendfsync", "always")
        monitor.close()
    return out


def run(env: BenchEnv) -> dict[str, float]:
    asyncio.run(seed_posts(env, POSTS))
    api, base = start_api(env)
    port = int(base.rsplit(":", 1)[1])
    bare_port = free_port()
    bare = env.start(
        "bare-asgi",
        [env.python, "-m", "bench.bare_asgi", "--port", str(bare_port)],
        env.child_env(),
    )
    wait_for(lambda: bare.check() or _listening(bare_port), 60, "bare ASGI endpoint up")
    view_every_post(
        base, POSTS
    )  # fills the existence cache, as in any API that has been serving a while
    warm = [_loadgen(env, p, WARMUP) for p in (port, bare_port)]
    figures = _closed(env, {"ours": (api, port), "bare": (bare, bare_port)})
    print(
        f"  ours {figures['ours_rps']:,.0f} req/s ({figures['ours_cpu_ms_per_request']:.2f} ms "
        f"CPU/request), bare {figures['bare_rps']:,.0f} req/s "
        f"({figures['bare_cpu_ms_per_request']:.2f} ms CPU/request)",
        flush=True,
    )
    bare.stop()
    figures.update(_bulk(env, base, port))
    figures.update(_fsync(env, port))
    api.check()
    accepted = asyncio.run(buffered_total(env))
    counted = (
        sum(w["requests"] for w in warm)
        + figures["ours_requests"]
        + figures["bare_requests"]
        + figures["bulk_increments"]
        + figures["always_requests"]
        + figures["everysec_requests"]
    )
    slack = 4 * CONNECTIONS + 2 * 64 + BATCH_CONNECTIONS * BATCH_ITEMS
    if not 0 <= accepted - counted <= slack:
        raise AssertionError(f"Redis holds {accepted} increments for {counted} accepted")
    for key, (num, den, _) in COMPARISONS.items():
        figures[key] = figures[num] / figures[den]
    print(
        table(
            f"view ingest, one process each ({LOADGEN_PROCS} loadgen processes)",
            ["run", "req/s", "p50 ms", "p99 ms", "CPU ms/req", "core share"],
            [
                [
                    "ours, closed loop",
                    figures["ours_rps"],
                    "-",
                    figures["ours_closed_p99_ms"],
                    figures["ours_cpu_ms_per_request"],
                    f"{figures['ours_core_share']:.0%}",
                ],
                [
                    "bare ASGI, closed loop",
                    figures["bare_rps"],
                    "-",
                    figures["bare_closed_p99_ms"],
                    figures["bare_cpu_ms_per_request"],
                    f"{figures['bare_core_share']:.0%}",
                ],
                [
                    f"ours, open loop {OPEN_RATE:,.0f}/s, always",
                    figures["always_rps"],
                    figures["always_p50_ms"],
                    figures["always_p99_ms"],
                    "-",
                    "-",
                ],
                [
                    f"ours, open loop {OPEN_RATE:,.0f}/s, everysec",
                    figures["everysec_rps"],
                    figures["everysec_p50_ms"],
                    figures["everysec_p99_ms"],
                    "-",
                    "-",
                ],
                [
                    f"bulk, {BATCH_ITEMS} items/request",
                    figures.get("bulk_requests_per_s", "-"),
                    "-",
                    figures.get("bulk_p99_ms", "-"),
                    "-",
                    "-",
                ],
            ],
        )
    )
    print(
        f"  bulk increments/s: {figures['bulk_increments_per_s']:,.0f}; Redis aof-fsync-always "
        f"stalls >= {STALL_MS} ms: {figures['always_fsync_stall_seconds']:.0f} s with one, worst "
        f"{figures['always_fsync_worst_stall_ms']:.0f} ms (everysec: "
        f"{figures['everysec_fsync_stall_seconds']:.0f})"
    )
    return figures


def _listening(port: int) -> bool:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
