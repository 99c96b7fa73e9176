"""A Prometheus for `make run`: a scrape config for the local stack (api, workers, beat) with
the project's alert rules, and the command that starts it. `make run PROMETHEUS=1` starts it
too; otherwise the banner prints the command. The binary is Debian's (`make tools`)."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from celery_stack_devstack.processes import Proc

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "charts/celery-stack/files/monitoring/alerts.yaml"
PORT = 9090


def binary() -> str:
    local = ROOT / ".tools/bin/prometheus"
    return str(local) if local.exists() else (shutil.which("prometheus") or "prometheus")


def prepare(run_dir: Path, api_port: int, stack: list[Proc], port: int = PORT) -> Proc:
    """Write run_dir/prometheus-server/prometheus.yml; the Proc that runs Prometheus on it."""
    home = run_dir / "prometheus-server"
    home.mkdir(parents=True, exist_ok=True)
    jobs: dict[str, list[str]] = {"api": [f"127.0.0.1:{api_port}"]}
    for p in stack:
        if "METRICS_PORT" in p.env:
            job = "beat" if p.name.startswith("beat") else "worker"
            jobs.setdefault(job, []).append(f"127.0.0.1:{p.env['METRICS_PORT']}")
    config = {
        "global": {"scrape_interval": "5s", "evaluation_interval": "5s"},
        "rule_files": [str(RULES)] if RULES.exists() else [],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": targets}]}
            for job, targets in jobs.items()
        ],
    }
    cfg = home / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = [
        binary(),
        f"--config.file={cfg}",
        f"--storage.tsdb.path={home / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    return Proc("prometheus", argv)


def banner(proc: Proc, *, started: bool) -> str:
    address = proc.argv[-1].split("=", 1)[1]
    if started:
        return f"  {'prometheus':<20} http://{address}/  (alerts /alerts, rules from monitoring/)"
    return f"  {'prometheus':<20} not started: `make run PROMETHEUS=1`, or run\n    " + " ".join(
        proc.argv
    )
