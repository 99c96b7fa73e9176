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
from pathlib import Path

import asyncpg
import pytest
import redis
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
