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
  Before it, FSYNC_PROBES small appends + fsync on Redis's own directory: what one fsync costs
  on that disk, the unit `always` adds to every reply. Each policy starts from a settled AOF
  (rewritten, dirty pages written back); the bulk run comes after them, and then `always` once
  more right after it ("after bulk"). Then always and everysec again while a neighbour process
  appends to a file on the same disk (64 MiB/s, an fsync every 8 MiB: a checkpoint, a tenant),
  with the fsync probe repeated under it: the tail `always` gets from a busy disk
  (docs/loss-bounds.md explains it).

Afterwards the increments buffered in Redis must equal what the generators counted as
accepted (plus requests in flight when a generator stopped): a fast endpoint that drops
views cannot score.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
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
FSYNC_PROBES = sized(500, 100)
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
    "always_over_everysec_busy_disk_p99": (
        "always_busy_disk_p99_ms",
        "everysec_busy_disk_p99_ms",
        f"p99 at {OPEN_RATE:,.0f} req/s, disk busy: appendfsync always / everysec",
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
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "max_ms": latencies[-1],
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


def _disk_fsync(directory: Path, n: int = FSYNC_PROBES) -> dict[str, float]:
    """What one fsync costs on the disk Redis's AOF is on: append a small record and fsync it,
    n times, as `appendfsync always` does once per event-loop iteration that wrote."""
    probe = directory / "fsync-probe"
    took: list[float] = []
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for _ in range(n):
            os.write(fd, b"*3\r\n$7\r\nHINCRBY\r\n" + b"x" * 100)
            t = time.perf_counter()
            os.fsync(fd)
            took.append((time.perf_counter() - t) * 1000)
    finally:
        os.close(fd)
        probe.unlink()
    took.sort()
    return {
        "disk_fsync_p50_ms": took[len(took) // 2],
        "disk_fsync_p99_ms": took[int(0.99 * len(took))],
        "disk_fsync_max_ms": took[-1],
    }


def _settle(monitor: redis.Redis) -> None:
    """Compact the AOF (BGREWRITEAOF, waited for) and write back dirty pages, so an open-loop
    run starts from the same state and not behind what an earlier phase appended."""
    monitor.execute_command("BGREWRITEAOF")
    wait_for(
        lambda: (
            not int(monitor.info("persistence")["aof_rewrite_in_progress"])
            and not int(monitor.info("persistence")["aof_rewrite_scheduled"])
        ),
        120,
        "AOF rewrite done",
    )
    os.sync()


def _open_loop(env: BenchEnv, port: int, monitor: redis.Redis, label: str) -> dict[str, float]:
    """OPEN_RATE req/s for DURATION with the current appendfsync; Redis's fsync stalls."""
    monitor.execute_command("LATENCY", "RESET")
    res = _loadgen(env, port, DURATION, connections=64, rate=OPEN_RATE)
    stalls, worst = _stalls(monitor)
    return {
        f"{label}_rps": res["rps"],
        f"{label}_p50_ms": res["p50_ms"],
        f"{label}_p90_ms": res["p90_ms"],
        f"{label}_p99_ms": res["p99_ms"],
        f"{label}_max_ms": res["max_ms"],
        f"{label}_requests": float(res["requests"]),
        f"{label}_fsync_stall_seconds": float(stalls),
        f"{label}_fsync_worst_stall_ms": float(worst),
    }


# A neighbour on the same filesystem (a PostgreSQL checkpoint, another tenant): appends 1 MiB
# blocks at NEIGHBOUR_MIB_S, fsync every NEIGHBOUR_FSYNC_MIB, the file truncated every 512 MiB.
# Paced, so that it loads the disk and not the CPU the servers share with it.
NEIGHBOUR_MIB_S = 64
NEIGHBOUR_FSYNC_MIB = 8
_NEIGHBOUR = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
block, n, start, rate = os.urandom(1 << 20), 0, time.monotonic(), float(sys.argv[2])
while True:
    os.write(fd, block)
    n += 1
    if n % int(sys.argv[3]) == 0:
        os.fsync(fd)
    if n % 512 == 0:
        os.ftruncate(fd, 0)
    ahead = n / rate - (time.monotonic() - start)
    if ahead > 0:
        time.sleep(ahead)
"""


@contextlib.contextmanager
def _busy_disk(env: BenchEnv, directory: Path) -> Iterator[None]:
    target = directory / "neighbour.bin"
    argv = [env.python, "-c", _NEIGHBOUR, str(target)]
    proc = subprocess.Popen([*argv, str(NEIGHBOUR_MIB_S), str(NEIGHBOUR_FSYNC_MIB)])
    try:
        time.sleep(1)  # its first writes under way
        if proc.poll() is not None:
            raise RuntimeError(f"the disk neighbour exited with {proc.returncode}")
        yield
    finally:
        if proc.poll() is not None:
            raise RuntimeError(f"the disk neighbour exited with {proc.returncode}")
        proc.kill()
        proc.wait()
        target.unlink(missing_ok=True)


def _fsync(env: BenchEnv, port: int, monitor: redis.Redis) -> dict[str, float]:
    """The disk's own fsync cost, then the open loop with always and everysec, each from a
    settled AOF; then both again with a neighbour writing to the same disk. Leaves
    appendfsync always."""
    directory = Path(monitor.config_get("dir")["dir"])
    out: dict[str, float] = _disk_fsync(directory)
    try:
        monitor.config_set("latency-monitor-threshold", STALL_MS)
        for busy in (False, True):
            for policy in ("always", "everysec"):
                monitor.config_set("appendfsync", policy)
                _settle(monitor)
                label = f"{policy}_busy_disk" if busy else policy
                if not busy:
                    out.update(_open_loop(env, port, monitor, label))
                    continue
                with _busy_disk(env, directory):
                    if policy == "always":
                        probe = _disk_fsync(directory, FSYNC_PROBES // 5)
                        out.update({f"busy_{k}": v for k, v in probe.items()})
                    out.update(_open_loop(env, port, monitor, label))
    finally:
        monitor.config_set("appendfsync", "always")
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
    monitor = redis.Redis.from_url(env.redis_url, decode_responses=True)
    try:
        figures.update(_fsync(env, port, monitor))
        figures.update(_bulk(env, base, port))
        # always again, right after the bulk run appended its increments (and Redis may be
        # rewriting the grown AOF): the same disk, now with writes queued ahead of each fsync
        figures.update(_open_loop(env, port, monitor, "always_after_bulk"))
    finally:
        monitor.close()
    api.check()
    accepted = asyncio.run(buffered_total(env))
    counted = (
        sum(w["requests"] for w in warm)
        + figures["ours_requests"]
        + figures["bare_requests"]
        + figures["bulk_increments"]
        + figures["always_requests"]
        + figures["everysec_requests"]
        + figures["always_after_bulk_requests"]
        + figures["always_busy_disk_requests"]
        + figures["everysec_busy_disk_requests"]
    )
    slack = 4 * CONNECTIONS + 5 * 64 + BATCH_CONNECTIONS * BATCH_ITEMS
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
                *[
                    [
                        f"ours, open loop {OPEN_RATE:,.0f}/s, {policy}, disk busy",
                        figures[f"{policy}_busy_disk_rps"],
                        figures[f"{policy}_busy_disk_p50_ms"],
                        figures[f"{policy}_busy_disk_p99_ms"],
                        "-",
                        "-",
                    ]
                    for policy in ("always", "everysec")
                ],
                [
                    f"ours, open loop {OPEN_RATE:,.0f}/s, always, after bulk",
                    figures["always_after_bulk_rps"],
                    figures["always_after_bulk_p50_ms"],
                    figures["always_after_bulk_p99_ms"],
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
        f"  one fsync on Redis's disk: p50 {figures['disk_fsync_p50_ms']:.1f} ms, p99 "
        f"{figures['disk_fsync_p99_ms']:.1f} ms, max {figures['disk_fsync_max_ms']:.1f} ms; open "
        f"loop p90/max ms: always {figures['always_p90_ms']:.1f}/{figures['always_max_ms']:.0f}, "
        f"everysec {figures['everysec_p90_ms']:.1f}/{figures['everysec_max_ms']:.0f}"
    )
    print(
        f"  with a neighbour writing to the same disk: one fsync p50 "
        f"{figures['busy_disk_fsync_p50_ms']:.1f} ms, p99 {figures['busy_disk_fsync_p99_ms']:.1f}"
        f" ms; always: {figures['always_busy_disk_fsync_stall_seconds']:.0f} s with an fsync stall"
        f" >= {STALL_MS} ms, worst {figures['always_busy_disk_fsync_worst_stall_ms']:.0f} ms, max"
        f" latency {figures['always_busy_disk_max_ms']:.0f} ms (everysec max "
        f"{figures['everysec_busy_disk_max_ms']:.0f} ms)"
    )
    after = {k.removeprefix("always_after_bulk_"): v for k, v in figures.items()}
    print(
        f"  always after bulk: p90 {after['p90_ms']:.1f} ms, max {after['max_ms']:.0f} ms, "
        f"{after['fsync_stall_seconds']:.0f} s with an fsync stall >= {STALL_MS} ms, worst "
        f"{after['fsync_worst_stall_ms']:.0f} ms"
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
