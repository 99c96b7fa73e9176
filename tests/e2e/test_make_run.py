"""`make run`'s supervisor: with no DATABASE_URL / REDIS_URL it starts its own servers, migrates,
runs every service, and SIGINT (Ctrl-C) stops all of it."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from celery_stack_core.config import DEV_USER_TOKEN, Settings
from celery_stack_devstack.pytest_plugin import wait_until
from celery_stack_devstack.servers import free_port

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def at(iso: str) -> datetime:
    return datetime.fromisoformat(iso)


def free_port_run(n: int) -> int:
    """The first of n consecutive free ports (so a developer's own `make run` is no obstacle)."""
    import socket

    for base in range(20000, 60000, 7):
        socks = []
        try:
            for port in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


IDLE_SECONDS = 40
IDLE_MAX_LINES = 20  # a summary line a minute per periodic task, and slack


def lines(run_dir: Path) -> list[str]:
    return (run_dir / "stack.log").read_text(errors="replace").splitlines()


def test_local_stack_starts_and_stops_cleanly():
    run_dir = Path(tempfile.mkdtemp(prefix="celery-stack-run-"))
    run_dir.chmod(0o755)
    port = free_port()
    # As on a developer's shell: none of the settings the test session exported (the session's
    # `settings` fixture puts all of them, MAINTENANCE_RULE_OVERRIDES included, into os.environ).
    ours = set(Settings.env_names())
    env = {k: v for k, v in os.environ.items() if k not in ours}
    log = open(run_dir / "stack.log", "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "celery-stack-dev"),
            "run",
            "--run-dir",
            str(run_dir),
            "--api-port",
            str(port),
            "--move-ports",  # other runs may hold the default ports on a shared machine
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def ready():
            try:
                return httpx.get(f"{base}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return proc.poll() is not None

        def banner():
            return "celery-stack is running" in (run_dir / "stack.log").read_text() or (
                proc.poll() is not None
            )

        wait_until(banner, 180, interval=0.2, what="the banner")
        assert proc.poll() is None, (run_dir / "stack.log").read_text()[-3000:]
        # The banner comes once the API is ready (it came 11-54 s before it accepted requests)
        assert ready() and proc.poll() is None
        stack_env = (run_dir / "stack.env").read_text()  # what the CLIs read
        assert "REDIS_URL=redis://127.0.0.1:" in stack_env and "DATABASE_URL=" in stack_env
        h = {"Authorization": f"Bearer {DEV_USER_TOKEN}", "X-User-Id": "u"}
        post = httpx.post(f"{base}/api/v1/posts", json={"title": "t"}, headers=h).json()["id"]
        httpx.post(f"{base}/api/v1/posts/{post}/views", headers=h)

        def flushed():
            r = httpx.get(f"{base}/api/v1/posts/{post}/counts", headers=h).json()
            return r["counts"]["views"] == 1

        wait_until(flushed, 60, what="the view counted")
        # the maintenance-rules demo of the README: a coupon created to expire in 10 s is
        # seen active, then expired by its rule (every 3 s under make run)
        e = f"{base}/api/v1/examples"
        coupon = httpx.post(
            f"{e}/coupons", json={"code": "demo-10s", "expires_in": 10}, headers=h
        ).json()
        assert coupon["status"] == "active"

        def example(kind, key):
            return httpx.get(f"{e}/{kind}/{key}", headers=h).json()

        wait_until(
            lambda: example("coupons", coupon["id"])["status"] == "expired",
            60,
            what="the demo coupon expired by its rule",
        )
        seen = example("coupons", coupon["id"])
        assert at(seen["expired_at"]) >= at(coupon["expires_at"])
        # ... and an idle chat: assigned to the agent, warned once (20 s idle), ended (40 s)
        agent = httpx.post(f"{e}/agents", json={"name": "ann", "capacity": 2}, headers=h).json()
        chat = httpx.post(f"{e}/chats", json={"user_id": "carl"}, headers=h).json()["id"]
        wait_until(
            lambda: example("chats", chat)["status"] == "active", 60, what="the chat assigned"
        )
        assert example("chats", chat)["agent_id"] == agent["id"]

        def warnings():
            rows = httpx.get(f"{e}/rule-notifications", headers=h).json()
            return [r for r in rows if r["row_key"] == str(chat)]

        wait_until(lambda: warnings(), 60, what="the idle chat's warning")
        (warning,) = warnings()
        assert example("chats", chat)["status"] == "active"  # warned before it ends
        wait_until(
            lambda: example("chats", chat)["status"] == "ended", 60, what="the idle chat ended"
        )
        ended = example("chats", chat)
        (warning,) = warnings()  # still exactly one
        assert warning["rule"] == "send-timeout-warnings" and warning["recipient"] == "carl"
        # warned before its deadline, ended at (or after) it: never a warning after the end
        assert at(warning["created_at"]) < at(warning["deadline"]) <= at(ended["ended_at"])
        assert warning["delivered_at"] is not None  # through the outbox
        assert (run_dir / "postgres" / "PG_VERSION").exists() and (run_dir / "redis").exists()
        # Idle, nothing asked for 40 s: the periodic no-ops (flush, drain, relay, rules) log
        # at DEBUG with one summary line a minute each (issue 14: ~190-240 lines a minute).
        before = len(lines(run_dir))
        time.sleep(IDLE_SECONDS)
        idle = lines(run_dir)[before:]
        print(f"idle: {len(idle)} log lines in {IDLE_SECONDS} s")
        assert len(idle) <= IDLE_MAX_LINES, "\n".join(idle[:40])
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(90)
        log.close()
    text = (run_dir / "stack.log").read_text()
    assert code == 0, text[-3000:]
    assert "stopped" in text
    assert "Hitting Ctrl+C again" not in text  # children get one SIGTERM, not the terminal's SIGINT
    assert "superuser privileges" not in text
    assert not (run_dir / "stack.env").exists()
    assert not (run_dir / "postgres" / "postmaster.pid").exists(), "PostgreSQL left running"
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{base}/healthz", timeout=1)
    shutil.rmtree(run_dir, ignore_errors=True)
