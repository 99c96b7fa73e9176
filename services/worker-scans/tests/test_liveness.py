"""The liveness file (celery_stack_core.liveness) on a real worker-scans process: touched while
the worker consumes, no longer touched once the broker is gone, touched again after Redis comes
back. A probe on its age catches the worker that answers ping but consumes nothing."""

import time

import pytest

from celery_stack_core.liveness import heartbeat_age
from celery_stack_devstack.pytest_plugin import wait_until
from celery_stack_devstack.servers import RedisServer


@pytest.mark.chaos
def test_heartbeat_file_follows_the_broker(start_service, tmp_path):
    broker = RedisServer(tmp_path / "redis").start()
    alive = tmp_path / "alive"
    try:
        start_service(
            "worker-scans",
            ["celery-stack-worker-scans", "--concurrency", "1"],
            REDIS_URL=broker.url,
            WORKER_HEARTBEAT_FILE=str(alive),
            WORKER_HEARTBEAT_INTERVAL="0.5",
        )
        wait_until(alive.exists, timeout=90, what="worker consuming")
        first = alive.stat().st_mtime
        wait_until(lambda: alive.stat().st_mtime > first, timeout=10, what="file touched again")
        assert heartbeat_age(str(alive)) < 3

        broker.kill9()
        # stops being touched (or is removed when the consumer stops) ...
        wait_until(lambda: heartbeat_age(str(alive)) > 3, timeout=30, what="heartbeat going stale")
        time.sleep(2)
        assert heartbeat_age(str(alive)) > 3  # ... and stays stale while the broker is away

        broker.start()  # same port
        wait_until(
            lambda: heartbeat_age(str(alive)) < 2, timeout=90, what="heartbeat after restart"
        )
        mark = alive.stat().st_mtime
        wait_until(lambda: alive.stat().st_mtime > mark, timeout=10, what="touched after restart")
    finally:
        broker.stop()
