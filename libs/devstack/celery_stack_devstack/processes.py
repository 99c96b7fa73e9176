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


def _with_env(proc: Proc, **env: str) -> Proc:
    return Proc(proc.name, proc.argv, {**proc.env, **env})


def local_stack(run_dir: Path, api_port: int) -> list[Proc]:
    return [
        Proc(
            "api",
            [_bin("celery-stack-api"), "serve", "--host", "127.0.0.1", "--port", str(api_port)],
        ),
        worker("worker-counters", "celery-stack-worker-counters", run_dir, 9808),
        # scans: the local demo site (demo.localtest -> 127.0.0.1) is the only private target
        # the scanner may reach; production leaves both settings empty.
        _with_env(
            worker("worker-scans", "celery-stack-worker-scans", run_dir, 9809),
            SCANNER_ALLOW_PRIVATE_CIDRS="127.0.0.1/32",
            SCANNER_RESOLVE='{"demo.localtest": ["127.0.0.1"]}',
        ),
        worker("worker-maintenance", "celery-stack-worker-maintenance", run_dir, 9812),
        Proc("demo-site", [_bin("celery-stack-demo-site"), "--port", "8081", "--slow", "0.5"]),
        beat("beat-1", run_dir, 9810),
        beat("beat-2", run_dir, 9811),
    ]


def beat(name: str, run_dir: Path, metrics_port: int) -> Proc:
    """A beat replica: two run locally, one leads and one stands by (Redis election).

    --restart-on-loss: a replica that loses leadership re-execs instead of exiting, so the
    local stack (which stops when a child exits) keeps running; on Kubernetes it just exits.
    """
    return Proc(
        name,
        [_bin("celery-stack-beat"), "run", "--restart-on-loss"],
        {
            "METRICS_PORT": str(metrics_port),
            "BEAT_HEARTBEAT_FILE": str(run_dir / f"{name}.alive"),
            "POD_NAME": name,
        },
    )
