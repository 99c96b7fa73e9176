"""View ingest: throughput and latency of ONE API process under load from another process.

`celery-stack-api serve` (uvicorn, one worker process, as the chart runs it per replica)
takes `POST /api/v1/posts/{id}/views` with the dev user's bearer token for random ids of
1,000 existing posts. Every 202 is one HINCRBY into our Redis (AOF, appendfsync always: the
reply waits for the fsync). The generator is wrk when it is on PATH (installed with apt-get
when we are root and it is missing), else bench/loadgen.py; either runs as its own process,
closed loop, keep-alive, no pipelining, after a warm-up that is not recorded (it fills the
existence cache, as any running API has).

Beside the rate, the API process's CPU time per request and the share of a core it got are
printed: on a machine shared with other work the rate is the product of the two, and
1000 / (CPU ms per request) is what one whole core would give.

After the run, the buffered increments in Redis must equal the 202s counted (the warm-up
included): a fast endpoint that drops views cannot score.

Throughput comes from the closed-loop runs (the most the process serves). Latency against the
target comes from a third run, open loop at exactly 2,500 req/s (bench/loadgen.py, 64
connections, each request timed from its scheduled send time so a stall cannot hide its
queue; two generator processes of 32 connections and 1,250 req/s each, so the generator is
not the bottleneck): a closed loop at full speed only measures the queue in front of a
saturated server. Redis's latency monitor records its main-thread stalls during that run:
with appendfsync always every reply waits for the AOF fsync, so a slow fsync stalls every
request in flight. A last run repeats the open loop with appendfsync everysec (a CONTROL,
not the production setting) to tell the API's own latency from the fsync's.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil
import redis

from bench.common import BenchEnv, Proc, http_ok, table, verdict, wait_for
from celery_stack_devstack.servers import free_port

POSTS = 1_000
CONNECTIONS = (32, 64)
OPEN_LOOP_CONNECTIONS = 64
OPEN_LOOP_PROCS = 2  # one Python process alone has no headroom at 2,500 req/s on a busy core
STALL_MS = 10
DURATION = 15.0
WARMUP = 3.0
TARGET_RPS = 2_500.0
TARGET_P99_MS = 25.0
TOKEN = "dev-user-token"  # the documented local-only token; ENVIRONMENT=test accepts it
PATH_TEMPLATE = "/api/v1/posts/{id}/views"

WRK_SCRIPT = """
math.randomseed(7)
wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer %(token)s"
wrk.headers["Content-Length"] = "0"
request = function()
  return wrk.format(nil, "/api/v1/posts/" .. math.random(1, %(posts)d) .. "/views")
end
"""


def _wrk() -> str | None:
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    print("  wrk not on PATH: trying apt-get install -y wrk", flush=True)
    try:
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "wrk"], capture_output=True, timeout=180, check=False
        )
    except (subprocess.TimeoutExpired, OSError):
        return None
    return shutil.which("wrk")


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text.strip())
    if not m:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def _run_wrk(wrk: str, port: int, connections: int, seconds: float, script: Path) -> dict[str, Any]:
    out = subprocess.run(
        [
            wrk,
            "-t1",
            f"-c{connections}",
            f"-d{seconds:.0f}s",
            "--latency",
            "-s",
            str(script),
            f"http://127.0.0.1:{port}",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    pcts = dict(re.findall(r"^\s+(\d+)%\s+(\S+)$", out, re.M))
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "generator": "wrk",
        "connections": connections,
        "requests": requests,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1) if errors else "",
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": _ms(pcts["50"]),
        "p90_ms": _ms(pcts["90"]),
        "p99_ms": _ms(pcts["99"]),
        "raw": out,
    }


def _run_python(
    env: BenchEnv, port: int, connections: int, seconds: float, rate: float = 0.0, procs: int = 1
) -> dict[str, Any]:
    """bench/loadgen.py in `procs` processes sharing the connections and the rate."""
    argv = [
        env.python,
        "-m",
        "bench.loadgen",
        "--port",
        str(port),
        "--path-template",
        PATH_TEMPLATE,
        "--ids",
        str(POSTS),
        "--connections",
        str(connections // procs),
        "--duration",
        str(seconds),
        "--warmup",
        "0",
        "--rate",
        str(rate / procs),
        "--dump",
        "--header",
        f"Authorization: Bearer {TOKEN}",
    ]
    root = str(Path(__file__).resolve().parent.parent)
    outs = [env.work_dir / f"loadgen-{n}.json" for n in range(procs)]
    running = [subprocess.Popen([*argv, "--out", str(out)], cwd=root) for out in outs]
    for proc in running:
        if proc.wait(timeout=seconds + 60):
            raise RuntimeError(f"loadgen exited with {proc.returncode}")
    parts = [json.loads(out.read_text()) for out in outs]
    latencies = sorted(x for part in parts for x in part["latencies_ms"])
    statuses: dict[str, int] = {}
    for part in parts:
        for status, n in part["statuses"].items():
            statuses[status] = statuses.get(status, 0) + n

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q / 100 * len(latencies)))]

    return {
        "generator": f"bench/loadgen.py x{procs}",
        "mode": parts[0]["mode"].replace(f"{rate / procs:.0f}", f"{rate:.0f}"),
        "connections": connections,
        "requests": len(latencies),
        "statuses": statuses,
        "non_2xx": sum(n for status, n in statuses.items() if status != "202"),
        "rps": len(latencies) / seconds,
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
    }


async def _seed(env: BenchEnv) -> None:
    from sqlalchemy import text

    from celery_stack_core.db import make_engine

    engine = make_engine(env.settings())
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO posts (author_id, title) "
                    "SELECT 'bench', 'post ' || g FROM generate_series(1, :n) AS g"
                ),
                {"n": POSTS},
            )
    finally:
        await engine.dispose()


def _stalls(monitor: redis.Redis) -> dict[str, tuple[int, int]]:
    """Per latency-monitor event: seconds that had a stall, and the worst stall in ms."""
    out: dict[str, tuple[int, int]] = {}
    for event, *_ in monitor.execute_command("LATENCY", "LATEST"):
        history = monitor.execute_command("LATENCY", "HISTORY", event)
        out[str(event)] = (len(history), max(int(ms) for _, ms in history))
    return out


async def _buffered_total(env: BenchEnv) -> int:
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


def run(env: BenchEnv) -> dict[str, float]:
    asyncio.run(_seed(env))
    port = free_port()
    api: Proc = env.start(
        "api",
        [env.bin("celery-stack-api"), "serve", "--host", "127.0.0.1", "--port", str(port)],
        env.child_env(LOG_LEVEL="WARNING"),
    )
    wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), 60, "api /healthz")
    wrk = _wrk()
    script = env.work_dir / "views.lua"
    script.write_text(WRK_SCRIPT % {"token": TOKEN, "posts": POSTS})

    def load(connections: int, seconds: float) -> dict[str, Any]:
        if wrk:
            return _run_wrk(wrk, port, connections, seconds, script)
        return _run_python(env, port, connections, seconds, procs=2)

    results: list[dict[str, Any]] = []
    accepted = 0
    try:
        warm = load(CONNECTIONS[0], WARMUP)  # fills the existence cache; not recorded
        proc = psutil.Process(api.pid)
        for connections in CONNECTIONS:
            time.sleep(1)
            cpu0 = sum(proc.cpu_times()[:2])
            res = load(connections, DURATION)
            cpu = sum(proc.cpu_times()[:2]) - cpu0
            # CPU the API spent per request, and how much of a core it got: on a machine
            # shared with other work the rate is capped by the second, not by the first.
            res["cpu_ms"] = 1000 * cpu / max(1, res["requests"])
            res["cpu_share"] = cpu / DURATION
            if res["non_2xx"] or res.get("socket_errors"):
                raise AssertionError(
                    f"{res['non_2xx']} non-2xx responses, socket errors: "
                    f"{res.get('socket_errors')}\n{api.output()[-2000:]}"
                )
            results.append(res)
            print(
                f"  {connections} connections: {res['rps']:,.0f} req/s, "
                f"p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms, "
                f"api CPU {res['cpu_ms']:.2f} ms/request, {res['cpu_share']:.0%} of a core",
                flush=True,
            )
        # Latency at the target rate: a closed loop at full speed measures the queue of a
        # saturated server; the target is p99 while serving 2,500 req/s.
        time.sleep(1)
        monitor = redis.Redis.from_url(env.redis_url, decode_responses=True)
        monitor.config_set("latency-monitor-threshold", STALL_MS)
        monitor.execute_command("LATENCY", "RESET")
        cpu0 = sum(proc.cpu_times()[:2])
        paced = _run_python(
            env, port, OPEN_LOOP_CONNECTIONS, DURATION, rate=TARGET_RPS, procs=OPEN_LOOP_PROCS
        )
        # Redis's own record of main-thread stalls (>= STALL_MS) during that run: with
        # appendfsync always it fsyncs the AOF before replying, and every reply waits.
        stalls = _stalls(monitor)
        monitor.close()
        cpu = sum(proc.cpu_times()[:2]) - cpu0
        paced["cpu_ms"] = 1000 * cpu / max(1, paced["requests"])
        paced["cpu_share"] = cpu / DURATION
        if paced["non_2xx"]:
            raise AssertionError(f"open loop: statuses {paced['statuses']}")
        print(
            f"  open loop at {TARGET_RPS:,.0f} req/s ({OPEN_LOOP_CONNECTIONS} connections): "
            f"{paced['rps']:,.0f} req/s served, p50 {paced['p50_ms']:.1f} ms, "
            f"p99 {paced['p99_ms']:.1f} ms",
            flush=True,
        )
        # Control, not the production setting: the same open loop with appendfsync everysec,
        # to tell the API's own latency from the AOF fsync's.
        time.sleep(1)
        monitor = redis.Redis.from_url(env.redis_url, decode_responses=True)
        monitor.config_set("appendfsync", "everysec")
        try:
            control = _run_python(
                env, port, OPEN_LOOP_CONNECTIONS, DURATION, rate=TARGET_RPS, procs=OPEN_LOOP_PROCS
            )
        finally:
            monitor.config_set("appendfsync", "always")
            monitor.close()
        control["mode"] += ", CONTROL appendfsync everysec"
        control["cpu_ms"] = control["cpu_share"] = float("nan")
        print(
            f"  control, appendfsync everysec: {control['rps']:,.0f} req/s served, "
            f"p50 {control['p50_ms']:.1f} ms, p99 {control['p99_ms']:.1f} ms",
            flush=True,
        )
        for event, (seconds, worst) in sorted(stalls.items()):
            print(
                f"  Redis stalls >= {STALL_MS} ms during the open loop: {event}: "
                f"{seconds} second(s) with one, worst {worst} ms",
                flush=True,
            )
        if not api.alive():
            raise RuntimeError(f"api exited:\n{api.output()[-3000:]}")
        accepted = asyncio.run(_buffered_total(env))
    finally:
        api.stop()

    generator = results[0]["generator"]
    results_rows = [*results, paced, control]
    rows = [
        [
            r.get("mode", "closed loop") + f", {r['connections']} conns",
            r["requests"],
            r["rps"],
            r["p50_ms"],
            r["p90_ms"],
            r["p99_ms"],
            r["cpu_ms"],
            f"{r['cpu_share']:.0%}" if r["cpu_share"] == r["cpu_share"] else "-",
            1000 / r["cpu_ms"] if r["cpu_ms"] == r["cpu_ms"] else float("nan"),
        ]
        for r in results_rows
    ]
    print(
        table(
            f"view ingest: one `celery-stack-api serve` process, {generator}, "
            f"{DURATION:.0f} s per run, Redis appendfsync always",
            [
                "load",
                "requests",
                "req/s",
                "p50 ms",
                "p90 ms",
                "p99 ms",
                "api CPU ms/req",
                "core share",
                "req/s per full core",
            ],
            rows,
        )
    )
    # A generator stops with requests in flight: those are counted in Redis, not in its total.
    answered = (
        warm["requests"]
        + sum(r["requests"] for r in results)
        + paced["requests"]
        + control["requests"]
    )
    slack = CONNECTIONS[0] + sum(CONNECTIONS) + 2 * OPEN_LOOP_CONNECTIONS
    print(
        f"increments buffered in Redis: {accepted:,}; 202s counted by the generator: {answered:,}"
    )
    if not 0 <= accepted - answered <= slack:
        raise AssertionError(f"Redis holds {accepted} increments for {answered} answered views")
    main = results[0]
    ok_rps = main["rps"] >= TARGET_RPS
    ok_p99 = paced["p99_ms"] <= TARGET_P99_MS and paced["rps"] >= 0.97 * TARGET_RPS
    print(
        f"targets: >= {TARGET_RPS:,.0f} req/s (wrk, {main['connections']} connections): "
        f"{verdict(ok_rps)}; p99 <= {TARGET_P99_MS:.0f} ms while serving "
        f"{TARGET_RPS:,.0f} req/s (open loop): {verdict(ok_p99)}"
    )
    fsync = stalls.get("aof-fsync-always", (0, 0))
    figures: dict[str, float] = {
        "buffered_increments": float(accepted),
        "open_loop_redis_fsync_stall_seconds": float(fsync[0]),
        "open_loop_redis_fsync_worst_ms": float(fsync[1]),
        "open_loop_rps": paced["rps"],
        "open_loop_p50_ms": paced["p50_ms"],
        "open_loop_p99_ms": paced["p99_ms"],
        "control_everysec_p50_ms": control["p50_ms"],
        "control_everysec_p99_ms": control["p99_ms"],
    }
    for r in results:
        c = r["connections"]
        figures[f"rps_c{c}"] = r["rps"]
        figures[f"p50_ms_c{c}"] = r["p50_ms"]
        figures[f"p99_ms_c{c}"] = r["p99_ms"]
        figures[f"api_cpu_ms_per_request_c{c}"] = r["cpu_ms"]
        figures[f"api_core_share_c{c}"] = r["cpu_share"]
    return figures
