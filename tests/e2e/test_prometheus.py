"""A real Prometheus (Debian's `prometheus`, installed by `make tools`) scrapes a local stack -
api, the three workers and beat - after traffic (a failing task and a scan of a refusing site included).
Each process serves only its own families, /healthz, /readyz, and 404 elsewhere. Every
dashboard panel query and every alert expression goes through Prometheus' HTTP API: each parses,
each returns series once the series it reads exist (alert expressions as their `bool` signal),
and every rule evaluates without error. Then the counters worker stops and the scans worker
stops consuming: the flush-lag, worker-down and not-consuming alerts go pending, then firing
(the test rule file is monitoring/alerts.py with Thresholds.for_tests(): same expressions,
seconds instead of minutes)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from signal import SIGTERM

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from celery_stack_core import metrics
from celery_stack_core.celery_app import make_celery
from celery_stack_core.config import DEV_USER_TOKEN
from celery_stack_devstack.pytest_plugin import env_for, wait_until
from celery_stack_devstack.servers import free_port
from celery_stack_scans.demo_site import DemoSite, make_certs

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from monitoring import alerts, dashboards, generate  # noqa: E402

pytestmark = pytest.mark.e2e
USER = {"Authorization": f"Bearer {DEV_USER_TOKEN}", "X-User-Id": "alice"}
# Series only a fault makes, which this test does not cause: their queries are checked to parse
# and evaluate, and listed; every other query must return series. (A failing task and a scan of a
# site that refuses connections are caused below, so the failure and fetch-error queries are not
# here.)
ONLY_ON_FAULT = (
    "kube_",  # kube-state-metrics: no Kubernetes here (promtool cases cover those alerts)
    'celery_stack_http_requests_total{code="5xx"}',  # a store outage or a bug
    "celery_stack_task_duplicates_refused_total",  # a beat slot delivered twice
    "celery_stack_counter_db_fallbacks_total",  # Redis down at ingest
    "celery_stack_flush_rows_dropped_total",  # a counted row deleted before its flush
    "celery_stack_flush_failures_total",  # PostgreSQL failing a flush
    "celery_stack_recount_drift_corrections_total",  # a count found wrong
    "celery_stack_rule_failures_total",  # a maintenance rule raising
)
# Alert expressions are evaluated with every comparison against a number turned into a `bool`
# comparison (`x > 5` -> `x > bool 5`): the result is the alert's signal for every series, so
# its aggregations and joins are checked on the real labels whether or not it fires. Except:
# CeleryStackWorkersDown is `... unless <the workers now>`, empty by construction while
# workers run; stopping the counters worker below makes it fire.
EMPTY_WHILE_HEALTHY = ("CeleryStackWorkersDown",)
_COMPARISON = re.compile(r"(==|!=|>=|<=|>|<)\s*(-?[0-9][0-9.e+-]*)")
_SELECTOR = re.compile(r"\b((?:celery|kube)_[a-z0-9_]+)(\{[^}]*\})?")
METRIC = re.compile(r"\b((?:celery|kube)_[a-z0-9_]+)\b")


def promtool_bin(name: str) -> str:
    local = ROOT / ".tools/bin" / name
    found = str(local) if local.exists() else shutil.which(name)
    assert found, f"{name} missing: `make tools` installs Debian's prometheus package"
    return found


class Prometheus:
    def __init__(self, tmp: Path, targets: dict[str, list[str]]) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        rules = tmp / "rules.yaml"
        rules.write_text(generate.rules_yaml(alerts.Thresholds.for_tests()))
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(rules)],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": addrs}]}
                for job, addrs in targets.items()
            ],
        }
        cfg = tmp / "prometheus.yml"
        cfg.write_text(yaml.safe_dump(config))
        self.log = tmp / "prometheus.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    promtool_bin("prometheus"),
                    f"--config.file={cfg}",
                    f"--storage.tsdb.path={tmp / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def get(self, path: str, **params: str) -> dict:
        r = httpx.get(f"{self.base}{path}", params=params, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.get("/api/v1/query", query=expr)["result"]

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.base}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def site(tmp_path):
    tls = make_certs(str(tmp_path / "tls"), ["site.test"])
    s = DemoSite(https_port=0, cert=tls["cert"], key=tls["key"])
    s.tls = tls
    yield s
    s.close()


def start_stack(start_service, tmp_path, site) -> dict:
    env = {
        "COUNTER_FLUSH_INTERVAL": "0.5",
        "RECOUNT_INTERVAL": "0.5",
        "OUTBOX_RELAY_INTERVAL": "1",
        "OUTBOX_RELAY_MIN_AGE": "0.5",
        "WORKER_HEARTBEAT_INTERVAL": "1",
        "SCANNER_ALLOW_PRIVATE_CIDRS": "127.0.0.1/32",
        "SCANNER_RESOLVE": json.dumps({"site.test": ["127.0.0.1"]}),
        "SCANNER_CA_BUNDLE": site.tls["ca"],
    }
    api_port, beat_port = free_port(), free_port()
    stack: dict = {"api": f"127.0.0.1:{api_port}", "workers": {}}
    stack["api_svc"] = start_service(
        "api",
        ["celery-stack-api", "serve", "--host", "127.0.0.1", "--port", str(api_port)],
        **env,
        METRICS_PORT="0",
    )
    for queue in ("counters", "scans", "maintenance"):
        port = free_port()
        stack["workers"][queue] = (
            start_service(
                f"worker-{queue}",
                [f"celery-stack-worker-{queue}", "--concurrency", "1"],
                **env,
                METRICS_PORT=str(port),
                PROMETHEUS_MULTIPROC_DIR=str(tmp_path / f"prom-{queue}"),
                WORKER_HEARTBEAT_FILE=str(tmp_path / f"{queue}.alive"),
            ),
            f"127.0.0.1:{port}",
        )
    stack["beat"] = f"127.0.0.1:{beat_port}"
    stack["beat_svc"] = start_service(
        "beat",
        ["celery-stack-beat", "run"],
        **env,
        METRICS_PORT=str(beat_port),
        BEAT_HEARTBEAT_FILE=str(tmp_path / "beat.alive"),
    )
    return stack


def traffic(base: str, site: DemoSite) -> int:
    with httpx.Client(base_url=base, headers=USER, timeout=30) as client:
        post = client.post("/api/v1/posts", json={"title": "metrics"})
        assert post.status_code == 201, post.text
        pid = post.json()["id"]
        for _ in range(20):
            assert client.post(f"/api/v1/posts/{pid}/views").status_code == 202
        assert client.get(f"/api/v1/posts/{pid}/counts").status_code == 200
        assert client.get("/api/v1/no-such-route").status_code == 404
        cfg = {"https_port": site.https_port, "http_port": site.http_port, "max_pages": 1}
        scan = client.post("/api/v1/scans", json={"domain": "site.test", "config": cfg})
        assert scan.status_code in (201, 202), scan.text
        sid = scan.json()["id"]

        def finished() -> bool:
            return client.get(f"/api/v1/scans/{sid}").json()["status"] in ("succeeded", "failed")

        wait_until(finished, 60, interval=0.5, what="scan finished")
        # a site whose ports refuse connections: scanner_fetch_errors_total{error="connect"}
        closed = {"https_port": free_port(), "http_port": free_port(), "max_pages": 1}
        refused = client.post("/api/v1/scans", json={"domain": "site.test", "config": closed})
        assert refused.status_code in (201, 202), refused.text
        sid = refused.json()["id"]
        wait_until(finished, 60, interval=0.5, what="refused scan finished")
    return pid


def a_task_fails(settings) -> None:
    """A message whose arguments its task does not take: the worker starts it and it raises
    (celery_task_failed_total, the failure-ratio alert's numerator)."""
    app = make_celery(settings, "prometheus-e2e")
    try:
        app.send_task("maintenance.outbox_relay", args=["no such argument"])
    finally:
        app.close()


def check_each_process_serves_its_own(stack: dict) -> None:
    """Every process with a metrics port: /metrics holds only its role's families (and its
    role's own families are there), /healthz and /readyz answer 200 while it works, any other
    path is 404."""
    processes = {"api": stack["api"], "beat": stack["beat"]}
    processes |= {metrics.role_of_worker(q): addr for q, (_, addr) in stack["workers"].items()}
    for role, addr in processes.items():
        base = f"http://{addr}"
        r = httpx.get(f"{base}/metrics", timeout=10)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain"), role
        names = {f.name for f in text_string_to_metric_families(r.text)}
        prefixes = metrics.prefixes_of(role)
        foreign = sorted(n for n in names if not n.startswith(prefixes))
        assert not foreign, f"{role} exports families of other processes: {foreign}"
        own = {n for n in names if n.startswith(("celery_stack_", "celery_"))}
        assert own, f"{role} exports none of its own families"
        for path in ("/healthz", "/readyz"):  # beat's readiness waits for its first progress
            wait_until(lambda u=f"{base}{path}": _ok(u), 30, what=f"{role} {path} 200")
        for path in ("/nope", "/metrics/x", "/healthzz"):
            assert httpx.get(f"{base}{path}", timeout=10).status_code == 404, (role, path)
    assert "celery_stack_beat_epoch" not in httpx.get(f"http://{stack['api']}/metrics").text


def alert_states(prom: Prometheus) -> dict[tuple[str, str], str]:
    return {
        (
            a["labels"]["alertname"],
            a["labels"].get("queue_name", a["labels"].get("counter", "")),
        ): a["state"]
        for a in prom.get("/api/v1/alerts")["alerts"]
    }


def janitor_sweep_as_the_cronjob_does(settings) -> None:
    """The CronJob's command, as a process that exits before any scrape: its run reaches
    Prometheus through the maintenance worker (janitor_runs, celery_stack_core.sweeps.runs)."""
    exe = str(Path(sys.executable).parent / "celery-stack-janitor")
    env = {**os.environ, **env_for(settings)}
    done = subprocess.run(
        [exe, "sweep", "--json"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


def test_prometheus_scrapes_the_stack_and_alerts_fire(
    start_service, settings, clean_db, tmp_path, site
):
    stack = start_stack(start_service, tmp_path, site)
    base = f"http://{stack['api']}"
    wait_until(lambda: _ok(f"{base}/readyz"), 60, what="api ready")
    for _, addr in stack["workers"].values():
        wait_until(lambda a=addr: _ok(f"http://{a}/readyz"), 90, what=f"worker {addr} ready")
    prom = Prometheus(
        tmp_path,
        {
            "api": [stack["api"]],
            "worker": [addr for _, addr in stack["workers"].values()],
            "beat": [stack["beat"]],
        },
    )
    try:
        wait_until(prom.ready, 30, what="prometheus ready")
        pid = traffic(base, site)
        a_task_fails(settings)
        check_each_process_serves_its_own(stack)
        # every target up, and the flush has applied the views (its metrics exist)
        wait_until(lambda: len(prom.query("up == 1")) == 5, 30, interval=0.5, what="5 targets up")
        wait_until(
            lambda: prom.query('celery_stack_flush_batches_total{outcome="applied"}'),
            30,
            interval=0.5,
            what="an applied flush scraped",
        )
        wait_until(
            lambda: prom.query("celery_task_failed_total"), 30, interval=0.5, what="a failure"
        )
        # the shipped maintenance rules run every 30 s or more from beat's start: the first
        # run of one sets the rule lag (what the rule panels and CeleryStackMaintenanceRuleLag read)
        wait_until(
            lambda: prom.query("celery_stack_rule_lag_seconds"),
            90,
            interval=0.5,
            what="a maintenance rule's first run scraped",
        )
        janitor_sweep_as_the_cronjob_does(settings)
        wait_until(
            lambda: prom.query(
                "time() - max by (sweep) (celery_stack_janitor_last_run_timestamp_seconds) < 600"
            ),
            60,
            interval=0.5,
            what="the CLI's sweep runs in Prometheus (CeleryStackJanitorNotRunning's input)",
        )
        time.sleep(3)  # a few more scrapes: rate() over them has two points per series
        waiting = check_queries(prom)
        print("queries waiting for series only a fault makes:")
        for name, _expr, missing in waiting:
            print(f"  {name}: {sorted(missing)}")
        check_rules_evaluate(prom)
        assert not _firing(prom, "CeleryStackWorkersDown", "CeleryStackBeatLeaderMissing")
        stop_counters_and_watch_alerts(prom, stack, base, pid, settings)
    finally:
        prom.stop()


def signal(expr: str) -> str:
    return _COMPARISON.sub(r"\1 bool \2", expr)


def check_queries(prom: Prometheus) -> list[tuple[str, str, set[str]]]:
    items = [(f"{stem}: {title}", expr) for stem, title, expr in dashboards.queries()]
    items += [
        (f"alert {a.name}", a.expr if a.name in EMPTY_WHILE_HEALTHY else signal(a.expr))
        for a in alerts.alerts(alerts.Thresholds.for_tests())
    ]
    items += [(f"alert {a.name} input {m}", m) for a in alerts.alerts() for m in a.metrics]
    waiting = []
    for name, expr in items:
        result = prom.query(expr)  # parses and evaluates, or the helper fails
        missing = {
            sel
            for sel in ("".join(m) for m in _SELECTOR.findall(expr))
            if not prom.query(f"count({sel})")
        }
        if missing:
            allowed = all(m.startswith(ONLY_ON_FAULT) for m in missing)
            assert allowed, f"{name}: no series after traffic for {sorted(missing)}"
            waiting.append((name, expr, missing))
        elif not name.startswith(tuple(f"alert {a}" for a in EMPTY_WHILE_HEALTHY)):
            assert result, f"{name}: no series although its metrics exist: {expr}"
    return waiting


def check_rules_evaluate(prom: Prometheus) -> None:
    def evaluated() -> bool:
        rules = [r for g in prom.get("/api/v1/rules")["groups"] for r in g["rules"]]
        never = "0001-01-01"  # Prometheus' zero time: not evaluated yet
        return len(rules) == len(alerts.alerts()) and not any(
            r["lastEvaluation"].startswith(never) for r in rules
        )

    wait_until(evaluated, 20, interval=0.5, what="every rule evaluated once")
    for group in prom.get("/api/v1/rules")["groups"]:
        for rule in group["rules"]:
            assert rule["health"] == "ok", (rule["name"], rule.get("lastError"))


def _firing(prom: Prometheus, *names: str) -> list[dict]:
    return [
        a
        for a in prom.get("/api/v1/alerts")["alerts"]
        if a["labels"]["alertname"] in names and a["state"] == "firing"
    ]


def stop_counters_and_watch_alerts(
    prom: Prometheus, stack: dict, base: str, pid: int, settings
) -> None:
    """The counters worker stops (flush lag, workers down) and the scans worker stops consuming
    as the chart's preStop hook makes it (not consuming): each alert goes pending, then firing,
    and the scans worker's /readyz says it is not ready."""
    script = ROOT / "charts/celery-stack/files/stop_consuming.py"
    env = {**os.environ, **env_for(settings), "CELERY_BROKER_URL": settings.broker_url}

    def stop_consuming() -> bool:  # its ping waits 2 s for replies: a busy machine can miss them
        done = subprocess.run(
            [sys.executable, str(script), "scans"], env=env, capture_output=True, text=True
        )
        return "cancelled consumers ['scans'] on ['scans@" in done.stdout

    wait_until(stop_consuming, 60, interval=1, what="the preStop script reaches the scans worker")
    # then the counters worker: the watch below starts at once, before any of the three alerts
    # can have left `pending` (the scans worker's readiness file goes stale only after 15 s)
    # (SIGTERM only: its warm shutdown may take seconds on a loaded machine, and a watch that
    # began after it missed the scans alert's `pending`; waited for after the watch)
    worker, _ = stack["workers"]["counters"]
    worker.signal(SIGTERM)
    watched = {
        ("CeleryStackWorkersDown", "counters"),
        ("CeleryStackCounterFlushLag", "post:views"),
        ("CeleryStackWorkersNotConsuming", "scans"),
    }
    seen: dict[tuple[str, str], list[str]] = {k: [] for k in watched}
    deadline = time.monotonic() + 120
    with httpx.Client(base_url=base, headers=USER, timeout=10) as client:
        while time.monotonic() < deadline:
            client.post(f"/api/v1/posts/{pid}/views")  # views keep arriving, none is flushed
            states = alert_states(prom)
            for key in watched:
                state = states.get(key)
                if state and (not seen[key] or seen[key][-1] != state):
                    seen[key].append(state)
            if all(s and s[-1] == "firing" for s in seen.values()):
                break
            time.sleep(0.5)
    worker.stop()
    for key, states in seen.items():
        assert states[:1] == ["pending"] and states[-1] == "firing", (key, states)
    _, scans_addr = stack["workers"]["scans"]
    assert httpx.get(f"http://{scans_addr}/readyz", timeout=10).status_code == 503


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
