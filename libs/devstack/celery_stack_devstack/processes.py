"""The local stack's processes, in one list. Add a service here and `make run` starts it."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Proc:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def worker(name: str, command: str, run_dir: Path, metrics_port: int, concurrency: int = 2) -> Proc:
    return Proc(
        name,
        [_bin(command), "--concurrency", str(concurrency)],
        {
            "METRICS_PORT": str(metrics_port),
            "PROMETHEUS_MULTIPROC_DIR": str(run_dir / "prometheus" / name),
            "WORKER_HEARTBEAT_FILE": str(run_dir / f"{name}.alive"),
        },
    )


def local_stack(run_dir: Path, api_port: int) -> list[Proc]:
    return [
        Proc(
            "api",
            [_bin("celery-stack-api"), "serve", "--host", "127.0.0.1", "--port", str(api_port)],
        ),
        worker("worker-counters", "celery-stack-worker-counters", run_dir, 9808),
        Proc("beat", [_bin("celery-stack-beat"), "run"], {"METRICS_PORT": "9810"}),
    ]
