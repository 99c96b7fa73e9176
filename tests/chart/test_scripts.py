"""The chart's pod scripts (charts/celery-stack/files/), run for real against real processes:
the worker probes, the preStop hook, the wait-for-migrations init container and the `helm test`
round trip. They are what the rendered manifests exec, so each is proven here, not in a cluster.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import asyncpg
import pytest
import redis
from celery import Celery
from chartlib import CHART, RELEASE, one, render_chart

from celery_stack_devstack.pytest_plugin import env_for, wait_until
from celery_stack_devstack.servers import RedisServer, free_port

FILES = CHART / "files"
BIN = Path(sys.executable).parent


def script(name: str, *args: str, env: dict[str, str], timeout: float = 120):
    return subprocess.run(
        [sys.executable, str(FILES / name), *args],
        env={**env, "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


class TestHeartbeatProbe:
    def test_fresh_old_and_missing(self, tmp_path):
        hb = tmp_path / "alive"
        env = {**os.environ, "WORKER_HEARTBEAT_FILE": str(hb)}
        assert script("heartbeat_check.py", "60", env=env).returncode == 1  # missing
        hb.touch()
        assert script("heartbeat_check.py", "60", env=env).returncode == 0
        old = time.time() - 120
        os.utime(hb, (old, old))
        proc = script("heartbeat_check.py", "60", env=env)
        assert proc.returncode == 1
        assert "stopped consuming" in proc.stdout
        # --consuming reads the readiness file beside it
        assert script("heartbeat_check.py", "--consuming", "60", env=env).returncode == 1
        (tmp_path / "alive.consuming").touch()
        assert script("heartbeat_check.py", "--consuming", "60", env=env).returncode == 0


@pytest.fixture
def private_redis(tmp_path):
    """Our own Redis: the preStop test broadcasts control commands, which must reach no worker
    but the one this test starts."""
    server = RedisServer(tmp_path / "redis", appendfsync="everysec").start()
    yield server.url
    server.stop()


def rendered(cmd: list[str]) -> list[str]:
    """A command exactly as the chart renders it, with the scripts ConfigMap's mount point
    mapped to the chart's files/ directory and `python` to this venv's interpreter."""
    mapped = [c.replace("/opt/celery-stack/scripts", str(FILES)) for c in cmd]
    return [sys.executable, *mapped[1:]] if mapped[0] == "python" else mapped


def run(cmd: list[str], env: dict[str, str], timeout: float = 120):
    return subprocess.run(
        rendered(cmd), env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def worker(docs: list[dict], queue: str = "counters") -> dict:
    dep = one(docs, "Deployment", f"{RELEASE}-celery-stack-worker-{queue}")
    return dep["spec"]["template"]["spec"]["containers"][0]


class TestWorkerLifecycle:
    """The worker Deployment's own command, probes and preStop hook, and the helm test pod's
    command, taken from `helm template` and run against real processes."""

    def test_rendered_worker_probes_roundtrip_prestop_and_warm_shutdown(
        self, settings, start_service, private_redis, tmp_path
    ):
        docs = render_chart({"queues": {"counters": {"concurrency": 1}}})
        dep = one(docs, "Deployment", f"{RELEASE}-celery-stack-worker-counters")
        ctr = dep["spec"]["template"]["spec"]["containers"][0]
        test_pod = one(docs, "Pod", f"{RELEASE}-celery-stack-test")["spec"]["containers"][0]

        hb = tmp_path / "alive"
        worker_env = {
            "REDIS_URL": private_redis,
            "WORKER_HEARTBEAT_FILE": str(hb),
            "WORKER_HEARTBEAT_INTERVAL": "1",
            "METRICS_PORT": "0",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"),
        }
        # the chart's exact worker command line: -Q, pool, concurrency, prefetch, child limits,
        # time limits - all accepted by the real entrypoint
        worker = start_service("worker-counters", ctr["command"], **worker_env)
        port = free_port()
        start_service(
            "api",
            ["celery-stack-api", "serve", "--host", "127.0.0.1", "--port", str(port)],
            **worker_env,
        )
        env = {**os.environ, **env_for(settings), **worker_env}

        # startup probe: passes once the worker is connected and consuming
        wait_until(
            lambda: run(ctr["startupProbe"]["exec"]["command"], env).returncode == 0,
            timeout=120,
            interval=1,
            what="worker startup probe",
        )
        assert run(ctr["livenessProbe"]["exec"]["command"], env).returncode == 0
        assert run(ctr["readinessProbe"]["exec"]["command"], env).returncode == 0

        # helm test: the API answers and a task makes a round trip through the queue
        test_cmd = [*test_pod["command"][:2], f"http://127.0.0.1:{port}", "60", "counters"]
        assert test_pod["command"][4:] == ["counters", "maintenance", "scans"]
        wait_until(
            lambda: run(test_cmd, env).returncode == 0, timeout=120, interval=1, what="helm test"
        )
        ok = run(test_cmd, env)
        assert "api /readyz" in ok.stdout and "queue counters: round trip ok" in ok.stdout

        # preStop: this pod's worker stops consuming, and only it
        stop = run(ctr["lifecycle"]["preStop"]["exec"]["command"], env, timeout=60)
        assert stop.returncode == 0, stop.stderr
        assert f"on ['counters@{socket.gethostname()}']" in stop.stdout
        assert worker.proc.poll() is None  # still running: it finishes its work on SIGTERM

        # nothing is consumed any more: the round trip now times out, the message stays queued
        stuck = script("roundtrip.py", "-", "3", "counters", env=env)
        assert stuck.returncode != 0
        client = redis.Redis.from_url(private_redis)
        assert client.llen("counters") == 1
        client.close()

        # SIGTERM: warm shutdown, clean exit well inside the grace period
        started = time.monotonic()
        assert (
            worker.stop(timeout=dep["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])
            == 0
        )
        assert time.monotonic() - started < 60

    def test_prestop_without_a_worker_never_blocks(self, private_redis):
        env = {**os.environ, "REDIS_URL": private_redis}
        proc = script("stop_consuming.py", "counters", env=env, timeout=60)
        assert proc.returncode == 0
        assert "on []" in proc.stdout


FAST_PROBES = {"workerProbes": {"heartbeatInterval": 1, "maxHeartbeatAge": 10}}
OUTAGE_SECONDS = 90


class TestWorkerLiveness:
    """Liveness means "wedged", never "a dependency is down" (issue 12 item 1). The chart's
    rendered probe commands run against real workers, each on a Redis of its own, the four
    phases at once: a 90 s Redis outage must not fail liveness, and the worker consumes again
    afterwards; a consumer cancelled while the broker is up, and a blocked event loop, fail
    liveness within maxHeartbeatAge (+ two missed ticks), and so does a worker that stops polling
    Redis while it still answers pings (the kombu hang after a Redis restart)."""

    def test_outage_is_not_a_wedge_but_a_wedge_is(self, settings, start_service, tmp_path):
        ctr = worker(render_chart({**FAST_PROBES, "queues": {"counters": {"concurrency": 1}}}))
        probes = {k: ctr[k]["exec"]["command"] for k in ("livenessProbe", "readinessProbe")}
        probes["startupProbe"] = ctr["startupProbe"]["exec"]["command"]
        # maxHeartbeatAge + two missed ticks, + slack for probe processes on a loaded machine
        window = FAST_PROBES["workerProbes"]["maxHeartbeatAge"] + 3 + 20

        def start(name: str, argv: list[str], **extra: str):
            broker = RedisServer(tmp_path / name / "redis").start()
            servers.append(broker)
            env = {
                "REDIS_URL": broker.url,
                "WORKER_HEARTBEAT_FILE": str(tmp_path / name / "alive"),
                "WORKER_HEARTBEAT_INTERVAL": "1",
                "METRICS_PORT": "0",
                "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / name / "prom"),
                **extra,
            }
            start_service(name, argv, **env)
            env = {**os.environ, **env_for(settings), **env}
            wait_until(
                lambda: run(probes["startupProbe"], env).returncode == 0,
                timeout=120,
                interval=1,
                what=f"{name}: startup probe",
            )
            return broker, env

        def alive(env: dict[str, str]) -> bool:
            return run(probes["livenessProbe"], env).returncode == 0

        def outage() -> None:
            broker, env = start("outage", ctr["command"])
            broker.kill9()
            end, ready = time.monotonic() + OUTAGE_SECONDS, []
            while time.monotonic() < end:
                probe = run(probes["livenessProbe"], env)
                assert probe.returncode == 0, f"liveness failed in an outage: {probe.stdout}"
                ready.append(run(probes["readinessProbe"], env).returncode == 0)
                time.sleep(3)
            assert not ready[-1], "readiness must drop while the worker cannot consume"
            broker.start()  # same port
            rt = script("roundtrip.py", "-", "120", "counters", env=env, timeout=180)
            assert rt.returncode == 0, rt.stdout + rt.stderr  # consuming again
            # The reconnect (kombu's backoff, slower on a loaded machine) may outlast this test's
            # 10 s max age: the file is touched at the watchdog's next check after consuming.
            wait_until(lambda: alive(env), timeout=15, interval=1, what="alive after the outage")
            wait_until(lambda: run(probes["readinessProbe"], env).returncode == 0, timeout=30)

        def wedged(name: str, wedge, argv: list[str], **extra: str) -> None:
            _, env = start(name, argv, **extra)
            assert alive(env)
            wedge(env)
            wait_until(lambda: not alive(env), timeout=window, interval=1, what=name)

        def cancel(env: dict[str, str]) -> None:
            stop = run(ctr["lifecycle"]["preStop"]["exec"]["command"], env, timeout=60)
            assert "cancelled consumers ['counters']" in stop.stdout, stop.stdout + stop.stderr

        def block(env: dict[str, str]) -> None:
            app = Celery("block", broker=env["REDIS_URL"], set_as_current=False)
            app.control.broadcast("block_loop", arguments={"seconds": window + 15}, reply=False)
            app.close()

        def stall(env: dict[str, str]) -> None:
            app = Celery("stall", broker=env["REDIS_URL"], set_as_current=False)
            (reply,) = app.control.broadcast("stall_polling", reply=True, timeout=10)
            assert next(iter(reply.values())) == {"dropped": 1}, reply
            # still answers pings: the wedge a `celery inspect ping` probe would miss
            assert app.control.ping(timeout=5)
            app.close()

        blocking = ["celery", "-A", "blocking_worker", "worker", "-Q", "counters", "-c", "1"]
        servers: list[RedisServer] = []
        phases = [
            outage,
            lambda: wedged("cancelled", cancel, ctr["command"]),
            lambda: wedged("blocked", block, blocking, PYTHONPATH=str(Path(__file__).parent)),
            lambda: wedged("stalled", stall, blocking, PYTHONPATH=str(Path(__file__).parent)),
        ]
        try:
            with ThreadPoolExecutor(len(phases)) as pool:
                for future in [pool.submit(p) for p in phases]:
                    future.result()
        finally:
            for server in servers:
                server.stop()


class TestWaitForMigrations:
    def test_blocks_until_the_migrations_job_ran(self, settings):
        name = f"cs_wait_{secrets.token_hex(4)}"
        admin = settings.stores.database_url.replace("+asyncpg", "")

        async def create() -> None:
            conn = await asyncpg.connect(admin)
            await conn.execute(f'CREATE DATABASE "{name}"')
            await conn.close()

        asyncio.run(create())
        url = settings.stores.database_url.rsplit("/", 1)[0] + f"/{name}"
        env = {**os.environ, **env_for(settings), "DATABASE_URL": url}
        env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
        waiting = subprocess.Popen(
            [sys.executable, str(FILES / "wait_for_migrations.py"), "0.5"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            time.sleep(3)
            assert waiting.poll() is None, "must wait while the schema is not at head"
            migrate = subprocess.run(
                [str(BIN / "celery-stack-migrate")],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert migrate.returncode == 0, migrate.stdout + migrate.stderr
            # at head now: the init container lets the pod start
            assert waiting.wait(timeout=60) == 0
            assert "schema not at head yet" in (waiting.stdout.read() if waiting.stdout else "")
        finally:
            if waiting.poll() is None:
                waiting.kill()
                waiting.wait()
