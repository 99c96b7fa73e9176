"""The local stack's processes, in one list. Add a service here and `make run` starts it."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

from celery_stack_core.queues import QUEUES


@dataclass(frozen=True)
class Proc:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


ROOT_WARNING_FILTER = "ignore:You're running the worker with superuser privileges"


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def worker(queue: str, run_dir: Path, metrics_port: int, concurrency: int = 2) -> Proc:
    """The worker of a registered queue (its registry command), named like its Deployment."""
    name = f"worker-{queue}"
    return Proc(
        name,
        [_bin(QUEUES[queue].command), "--concurrency", str(concurrency)],
        {
            "METRICS_PORT": str(metrics_port),
            "PROMETHEUS_MULTIPROC_DIR": str(run_dir / "prometheus" / name),
            "WORKER_HEARTBEAT_FILE": str(run_dir / f"{name}.alive"),
            # Local runs are often root (containers, CI): Celery's warning about it is noise
            # here; the chart runs workers as non-root.
            "PYTHONWARNINGS": ROOT_WARNING_FILTER,
        },
    )


def _with_env(proc: Proc, **env: str) -> Proc:
    return Proc(proc.name, proc.argv, {**proc.env, **env})


@dataclass(frozen=True)
class Ports:
    """Where the local stack listens: the API, the demo site, and metrics at base, base+1, ..."""

    api: int = 8000
    demo_site: int = 8081
    metrics_base: int = 9808

    def metrics(self, offset: int) -> int:
        return self.metrics_base + offset


def local_stack(run_dir: Path, ports: Ports) -> list[Proc]:
    api_port = ports.api
    return [
        Proc(
            "api",
            [_bin("celery-stack-api"), "serve", "--host", "127.0.0.1", "--port", str(api_port)],
        ),
        worker("counters", run_dir, ports.metrics(0)),
        # scans: the local demo site (demo.localtest -> 127.0.0.1) is the only private target
        # the scanner may reach; production leaves both settings empty.
        _with_env(
            worker("scans", run_dir, ports.metrics(1)),
            SCANNER_ALLOW_PRIVATE_CIDRS="127.0.0.1/32",
            SCANNER_RESOLVE='{"demo.localtest": ["127.0.0.1"]}',
        ),
        worker("maintenance", run_dir, ports.metrics(4)),
        Proc(
            "demo-site",
            [_bin("celery-stack-demo-site"), "--port", str(ports.demo_site), "--slow", "0.5"],
        ),
        beat("beat-1", run_dir, ports.metrics(2)),
        beat("beat-2", run_dir, ports.metrics(3)),
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
