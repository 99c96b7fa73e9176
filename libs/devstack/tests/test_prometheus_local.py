"""`make run`'s Prometheus: a config that scrapes the api, every worker and beat of the local
stack with the project's alert rules, which promtool accepts; the banner says how to start it."""

import shutil
import subprocess
from pathlib import Path

import yaml

from celery_stack_devstack import prometheus_local
from celery_stack_devstack.processes import Ports, local_stack

ROOT = Path(__file__).resolve().parents[3]


def test_config_scrapes_the_local_stack_and_promtool_accepts_it(tmp_path):
    ports = Ports(api=18000, demo_site=18081, metrics_base=19808)
    stack = local_stack(tmp_path, ports)
    proc = prometheus_local.prepare(tmp_path, ports.api, stack, port=19090)
    cfg_path = tmp_path / "prometheus-server/prometheus.yml"
    cfg = yaml.safe_load(cfg_path.read_text())
    jobs = {j["job_name"]: j["static_configs"][0]["targets"] for j in cfg["scrape_configs"]}
    metric_ports = sorted(int(p.env["METRICS_PORT"]) for p in stack if "METRICS_PORT" in p.env)
    assert jobs["api"] == ["127.0.0.1:18000"]
    assert sorted(int(t.rsplit(":", 1)[1]) for t in jobs["worker"] + jobs["beat"]) == metric_ports
    assert cfg["rule_files"] == [str(prometheus_local.RULES)]
    assert f"--config.file={cfg_path}" in proc.argv
    assert "--web.listen-address=127.0.0.1:19090" in proc.argv
    promtool = ROOT / ".tools/bin/promtool"
    tool = str(promtool) if promtool.exists() else shutil.which("promtool")
    assert tool, "`make tools` installs promtool"
    out = subprocess.run([tool, "check", "config", str(cfg_path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_banner_prints_the_command_when_not_started(tmp_path):
    proc = prometheus_local.prepare(tmp_path, 8000, [])
    text = prometheus_local.banner(proc, started=False)
    assert "make run PROMETHEUS=1" in text and " ".join(proc.argv) in text
    assert "http://127.0.0.1:9090/" in prometheus_local.banner(proc, started=True)
