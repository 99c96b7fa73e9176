"""The image, built and run (issue 12): `make image`'s build script, then migrations, the API,
every worker and beat from the image as containers - read-only root filesystem, non-root,
every capability dropped, host network to throwaway PostgreSQL and Redis - running the commands
the chart renders. The `helm test` round trip goes through every queue, views and a scan posted
over HTTP converge, and each container stops on SIGTERM with exit code 0 inside its grace period.

The engine: an answering Docker engine is used as it is; as root without one, the test installs
Debian's docker.io and starts dockerd itself (stopped again at the end). It skips, saying why,
only where no engine can run. Image size, build time and cold starts are printed and written to
.run/image-e2e.json.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import pytest

from celery_stack_core.config import DEV_USER_TOKEN
from celery_stack_devstack.pytest_plugin import wait_until
from celery_stack_devstack.servers import RedisServer, free_port

# The first test's budget covers the module's fixtures too (pytest-timeout counts setup): on a
# fresh machine that is installing docker.io, debootstrapping the base and building the image.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1800)]
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "chart"))
from chartlib import CHART, RELEASE, one, render_chart  # noqa: E402

IMAGE = "celery-stack:e2e"
SCRIPTS = "/opt/celery-stack/scripts"
USER = {"Authorization": f"Bearer {DEV_USER_TOKEN}", "X-User-Id": "img"}
QUEUES = ("counters", "maintenance", "scans")


def docker_cli() -> str:
    # Debian's docker.io client builds with its built-in BuildKit; a newer CLI needs buildx
    return (
        "/usr/bin/docker"
        if Path("/usr/bin/docker").exists()
        else (shutil.which("docker") or "docker")
    )


def _answers(cli: str) -> bool:
    try:
        return subprocess.run([cli, "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@dataclass
class Engine:
    cli: str
    setup_seconds: float  # 0 where an engine already answered; else install + start of dockerd
    how: str


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """An answering Docker engine: the machine's, or dockerd started here (root only)."""
    started = time.monotonic()
    cli = docker_cli()
    if _answers(cli):
        yield Engine(cli, 0.0, "the machine's engine")
        return
    how = "dockerd started by the test"
    if os.geteuid() != 0:
        pytest.skip("no Docker engine answers, and starting dockerd needs root")
    if not shutil.which("dockerd"):
        if not shutil.which("apt-get"):
            pytest.skip("no Docker engine and no apt-get to install Debian's docker.io")
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, timeout=300)
        inst = subprocess.run(
            ["apt-get", "install", "-y", "-q", "docker.io"], capture_output=True, timeout=600
        )
        if inst.returncode != 0:
            pytest.skip(f"apt-get install docker.io failed: {inst.stderr.decode()[-300:]}")
        cli = docker_cli()
        how = "docker.io installed and dockerd started by the test"
    log = open(tmp_path_factory.mktemp("dockerd") / "dockerd.log", "wb")  # noqa: SIM115
    # host-network containers only: no bridge, no iptables rules on a shared machine
    daemon = subprocess.Popen(
        ["dockerd", "--bridge=none", "--iptables=false", "--ip6tables=false"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not _answers(cli):
            if daemon.poll() is not None or time.monotonic() > deadline:
                log.flush()
                tail = Path(log.name).read_text()[-500:]
                pytest.skip(f"dockerd cannot run here: {tail}")
            time.sleep(1)
        yield Engine(cli, time.monotonic() - started, how)
    finally:
        daemon.terminate()
        try:
            daemon.wait(30)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()
        log.close()


@dataclass
class Built:
    cli: str
    seconds: float
    size: int
    report: dict[str, object] = field(default_factory=dict)


@pytest.fixture(scope="module")
def image(engine: Engine) -> Built:
    """`make image`'s script, for real: local base images where no registry is reachable."""
    started = time.monotonic()
    proc = subprocess.run(
        [str(ROOT / "scripts" / "image" / "build.sh")],
        env={**os.environ, "IMAGE": IMAGE, "DOCKER": engine.cli},
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    m = re.search(r"size \d+ MiB \((\d+) bytes\)", proc.stdout)
    assert m, proc.stdout
    bases = re.search(r"local bases .* ready in (\d+)s", proc.stdout)
    docker_build = re.search(r"built in (\d+)s", proc.stdout)
    assert docker_build, proc.stdout
    report: dict[str, object] = {
        "engine": engine.how,
        "engine_setup_seconds": round(engine.setup_seconds, 1),
        "local_bases_seconds": int(bases.group(1)) if bases else None,  # None: pulled/cached
        "docker_build_seconds": int(docker_build.group(1)),
    }
    return Built(engine.cli, time.monotonic() - started, int(m.group(1)), report)


def docker(cli: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([cli, *args], capture_output=True, text=True, timeout=timeout)


@dataclass
class Stack:
    cli: str
    env_file: Path
    mounts: list[str]
    names: list[str] = field(default_factory=list)
    started: dict[str, float] = field(default_factory=dict)

    def run(
        self, name: str, command: list[str], *, detach: bool = True, **env: str
    ) -> subprocess.CompletedProcess[str]:
        full = f"cs-e2e-{name}-{secrets.token_hex(3)}"
        args = [
            "run",
            "--name",
            full,
            "--network",
            "host",
            "--read-only",
            "--tmpfs",
            "/tmp:rw,size=256m,mode=1777",
            "--user",
            "10001:10001",
            "--cap-drop",
            "ALL",
            "--security-opt",
            "no-new-privileges",
            "--env-file",
            str(self.env_file),
            *[a for m in self.mounts for a in ("-v", m)],
            *[a for k, v in env.items() for a in ("-e", f"{k}={v}")],
        ]
        self.names.append(full)
        self.started[name] = time.monotonic()
        if detach:
            proc = docker(self.cli, *args, "-d", IMAGE, *command)
            assert proc.returncode == 0, proc.stderr
            self.started[full] = self.started.pop(name)
            return subprocess.CompletedProcess(args, 0, full, "")
        return docker(self.cli, *args, "--rm", IMAGE, *command, timeout=300)

    def exec_ok(self, name: str, *command: str) -> bool:
        return docker(self.cli, "exec", name, *command, timeout=30).returncode == 0

    def logs(self, name: str, tail: int = 40) -> str:
        proc = docker(self.cli, "logs", "--tail", str(tail), name)
        return proc.stdout + proc.stderr


@pytest.fixture
def stack(image: Built, settings, tmp_path) -> Iterator[Stack]:
    database = f"cs_image_{secrets.token_hex(4)}"

    async def create() -> None:
        conn = await asyncpg.connect(settings.stores.database_url.replace("+asyncpg", ""))
        await conn.execute(f'CREATE DATABASE "{database}"')
        await conn.close()

    asyncio.run(create())
    # readable by the containers' user 10001 (pytest's tmp dirs are private to root)
    shared = Path(tempfile.mkdtemp(prefix="cs-image-e2e-"))
    shared.chmod(0o755)
    redis_server = RedisServer(tmp_path / "redis")
    s = Stack(
        image.cli, shared / "env", [f"{CHART / 'files'}:{SCRIPTS}:ro", f"{shared}:{shared}:ro"]
    )
    s.shared = shared  # type: ignore[attr-defined]
    try:
        redis_server.start()
        env = {
            "ENVIRONMENT": "local",
            "LOG_LEVEL": "INFO",
            "DATABASE_URL": settings.stores.database_url.rsplit("/", 1)[0] + f"/{database}",
            "REDIS_URL": redis_server.url,
            "METRICS_PORT": "0",
            "WORKER_HEARTBEAT_INTERVAL": "1",
            "COUNTER_FLUSH_INTERVAL": "0.5",
            "RECOUNT_INTERVAL": "0.5",
            "OUTBOX_RELAY_INTERVAL": "1",
            "OUTBOX_RELAY_MIN_AGE": "0.5",
            "BEAT_ELECTION": "redis",
        }
        s.env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        s.env_file.chmod(0o644)
        yield s
    finally:
        for name in s.names:
            docker(image.cli, "rm", "-f", name)
        redis_server.stop()
        shutil.rmtree(shared, ignore_errors=True)


def rendered() -> dict[str, list[str]]:
    """The commands the chart runs, exactly as rendered."""
    docs = render_chart()
    full = f"{RELEASE}-celery-stack"
    cmds = {
        q: one(docs, "Deployment", f"{full}-worker-{q}")["spec"]["template"]["spec"]["containers"][
            0
        ]["command"]
        for q in QUEUES
    }
    cmds["beat"] = one(docs, "Deployment", f"{full}-beat")["spec"]["template"]["spec"][
        "containers"
    ][0]["command"]
    cmds["test"] = one(docs, "Pod", f"{full}-test")["spec"]["containers"][0]["command"]
    cmds["migrate"] = next(
        d for d in docs if d["kind"] == "Job" and "-migrations-" in d["metadata"]["name"]
    )["spec"]["template"]["spec"]["containers"][0]["command"]
    return cmds


def test_image_runs_the_stack_and_stops_cleanly(image: Built, stack: Stack, tmp_path) -> None:
    from celery_stack_scans.demo_site import DemoSite, make_certs

    cmds = rendered()
    tls = make_certs(str(stack.shared), ["site.test"])  # type: ignore[attr-defined]
    for path in tls.values():
        Path(path).chmod(0o644)
    site = DemoSite(https_port=0, cert=tls["cert"], key=tls["key"])
    scan_env = {
        "SCANNER_ALLOW_PRIVATE_CIDRS": "127.0.0.1/32",
        "SCANNER_RESOLVE": json.dumps({"site.test": ["127.0.0.1"]}),
        "SCANNER_CA_BUNDLE": tls["ca"],
    }
    with stack.env_file.open("a") as f:
        f.write("".join(f"{k}={v}\n" for k, v in scan_env.items()))
    cold: dict[str, float] = {}
    try:
        # migrations: the Job's command, to completion
        t0 = time.monotonic()
        migrate = stack.run("migrate", cmds["migrate"], detach=False)
        assert migrate.returncode == 0, migrate.stdout + migrate.stderr
        cold["migrate (run to completion)"] = time.monotonic() - t0

        api_port, beat_port = free_port(), free_port()
        api = stack.run(
            "api", ["celery-stack-api", "serve", "--host", "127.0.0.1", "--port", str(api_port)]
        ).stdout
        # as the worker Deployment sets it: prefork children's metrics files on the tmpfs
        prom = {"PROMETHEUS_MULTIPROC_DIR": "/tmp/prometheus"}
        workers = {q: stack.run(f"worker-{q}", cmds[q], **prom).stdout for q in QUEUES}
        beat = stack_run_beat(stack, cmds["beat"], beat_port)
        base = f"http://127.0.0.1:{api_port}"

        def http_ok(url: str) -> bool:
            try:
                return httpx.get(url, timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        probes = {
            api: lambda: http_ok(f"{base}/healthz"),
            beat: lambda: http_ok(f"http://127.0.0.1:{beat_port}/healthz"),
            **{
                name: (
                    lambda name=name: stack.exec_ok(
                        name, "python", f"{SCRIPTS}/heartbeat_check.py", "--consuming", "60"
                    )
                )
                for name in workers.values()
            },
        }
        pending = dict(probes)
        deadline = time.monotonic() + 180
        while pending and time.monotonic() < deadline:
            for name, ready in list(pending.items()):
                if ready():
                    cold[name.split("-", 2)[2].rsplit("-", 1)[0]] = (
                        time.monotonic() - stack.started[name]
                    )
                    del pending[name]
            time.sleep(0.5)
        assert not pending, {n: stack.logs(n) for n in pending}

        # helm test: the test Pod's command, from the image, through every queue
        test_cmd = [*cmds["test"][:2], base, "90", *cmds["test"][4:]]
        assert cmds["test"][4:] == list(QUEUES)
        rt = stack.run("helm-test", test_cmd, detach=False)
        if rt.returncode != 0:
            for q, n in workers.items():  # kept for the post-mortem
                (ROOT / ".run" / f"image-e2e-worker-{q}.log").write_text(stack.logs(n, 400))
        assert rt.returncode == 0, rt.stdout[-2000:] + rt.stderr[-2000:]
        for q in QUEUES:
            assert f"queue {q}: round trip ok" in rt.stdout

        # views and a scan over HTTP
        views = 30
        with httpx.Client(base_url=base, headers=USER, timeout=10) as client:
            post = client.post("/api/v1/posts", json={"title": "image"}).json()["id"]
            for i in range(views):
                r = client.post(f"/api/v1/posts/{post}/views", json={"viewer_id": f"v{i}"})
                assert r.status_code == 202, r.text
            config = {"https_port": site.https_port, "http_port": site.http_port,
                      "max_pages": 1, "check_http": False}  # fmt: skip
            r = client.post("/api/v1/scans", json={"domain": "site.test", "config": config})
            assert r.status_code in (201, 202), r.text
            scan_id = r.json()["id"]

            def converged() -> bool:
                counts = client.get(f"/api/v1/posts/{post}/counts").json()
                return counts["counts"]["views"] == views and not counts.get("partial")

            wait_until(converged, timeout=60, interval=0.5, what="view counts converge")
            terminal = {"succeeded", "failed", "cancelled", "dead"}
            wait_until(
                lambda: client.get(f"/api/v1/scans/{scan_id}").json()["status"] in terminal,
                timeout=90,
                interval=0.5,
                what="scan finishes",
            )
            scan = client.get(f"/api/v1/scans/{scan_id}").json()
            assert scan["status"] == "succeeded", scan

        # SIGTERM each container: exit code 0 inside its grace period
        docs = render_chart()
        grace = {
            q: one(docs, "Deployment", f"{RELEASE}-celery-stack-worker-{q}")["spec"]["template"][
                "spec"
            ]["terminationGracePeriodSeconds"]
            for q in QUEUES
        }
        stops: dict[str, float] = {}
        limits = {api: 30, beat: 30, **{workers[q]: grace[q] for q in QUEUES}}
        for name, limit in limits.items():
            t0 = time.monotonic()
            assert docker(stack.cli, "kill", "--signal", "TERM", name).returncode == 0
            waited = docker(stack.cli, "wait", name, timeout=limit + 10)
            took = time.monotonic() - t0
            assert waited.stdout.strip() == "0", (name, waited.stdout, stack.logs(name))
            assert took < limit, (name, took)
            stops[name.split("-", 2)[2].rsplit("-", 1)[0]] = took
    finally:
        site.close()
    report = {
        "image": IMAGE,
        "image_size_mib": round(image.size / 1024 / 1024, 1),
        "build_seconds": round(image.seconds, 1),  # make image's script: bases + build
        **image.report,
        "cold_start_seconds": {k: round(v, 1) for k, v in cold.items()},
        "sigterm_exit_seconds": {k: round(v, 1) for k, v in stops.items()},
    }
    out = ROOT / ".run" / "image-e2e.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"\nimage e2e: {json.dumps(report)}")


def stack_run_beat(stack: Stack, command: list[str], port: int) -> str:
    """Beat serves /healthz on METRICS_PORT: a port of its own on the host network."""
    env = stack.env_file.read_text().replace("METRICS_PORT=0\n", f"METRICS_PORT={port}\n")
    beat_env = stack.env_file.with_name("beat.env")
    beat_env.write_text(env)
    beat_env.chmod(0o644)
    own = Stack(stack.cli, beat_env, stack.mounts)
    name = own.run("beat", command).stdout
    stack.names.append(name)
    stack.started[name] = own.started[name]
    return name
