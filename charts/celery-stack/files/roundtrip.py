"""`helm test`: the API answers, and a task makes a round trip through every queue.

For each queue a Celery built-in task (`celery.accumulate`, registered in every worker) is sent
straight to that queue with its result requested, and the answer must come back from a worker
consuming that queue. No task of ours runs, nothing is written.
Usage: python roundtrip.py API_URL TIMEOUT QUEUE [QUEUE ...]
"""

from __future__ import annotations

import os
import sys
import urllib.request

from celery import Celery


def check_api(url: str, timeout: float) -> None:
    for path in ("/healthz", "/readyz"):
        with urllib.request.urlopen(url.rstrip("/") + path, timeout=timeout) as resp:  # noqa: S310
            body = resp.read().decode()
            if resp.status != 200:
                raise RuntimeError(f"{path}: HTTP {resp.status} {body}")
            print(f"api {path}: {body}", flush=True)


def roundtrip(app: Celery, queue: str, timeout: float) -> None:
    token = f"pong-{queue}"
    result = app.send_task(
        "celery.accumulate", args=[token], kwargs={"index": 0}, queue=queue, ignore_result=False
    )
    answer = result.get(timeout=timeout)
    result.forget()
    if answer != token:
        raise RuntimeError(f"queue {queue}: expected {token!r}, got {answer!r}")
    print(f"queue {queue}: round trip ok", flush=True)


def make_app() -> Celery:
    redis_url = os.environ["REDIS_URL"]
    broker = os.environ.get("CELERY_BROKER_URL") or redis_url
    backend = os.environ.get("CELERY_RESULT_BACKEND") or redis_url
    app = Celery("celery-stack-helm-test", broker=broker, backend=backend, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=600,
    )
    return app


def main(argv: list[str]) -> int:
    api_url, timeout, queues = argv[0], float(argv[1]), argv[2:]
    if api_url != "-":
        check_api(api_url, timeout)
    app = make_app()
    try:
        for queue in queues:
            roundtrip(app, queue, timeout)
    finally:
        app.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
