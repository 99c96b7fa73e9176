"""Monitoring as data: the generated files match their source, promtool accepts the rules and
passes a unit test per alert, every alert links a runbook section that exists, and every
dashboard panel queries Prometheus through the dashboard's data source variable."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from monitoring import alert_tests, alerts, dashboards, generate

ROOT = Path(__file__).resolve().parents[2]
RULES = generate.CHART_FILES / "alerts.yaml"


def promtool() -> str:
    local = ROOT / ".tools/bin/promtool"
    found = str(local) if local.exists() else shutil.which("promtool")
    assert found, "promtool missing: `make tools` installs Debian's prometheus package"
    return found


def test_generated_files_are_up_to_date():
    assert generate.main(["--check"]) == 0, "run `make monitoring`"


def test_promtool_checks_the_rules():
    out = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alerts.alerts())} rules found" in out.stdout + out.stderr


def test_promtool_unit_tests_pass_with_a_case_per_alert():
    assert alert_tests.untested() == []
    out = subprocess.run(
        [promtool(), "test", "rules", str(generate.RULE_TESTS)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_changed_threshold_fails_the_unit_tests(tmp_path):
    """The cases pin behaviour: a rule file with another threshold does not pass them."""
    changed = alerts.Thresholds(flush_lag_seconds=600)
    rules = tmp_path / "alerts.yaml"
    rules.write_text(generate.rules_yaml(changed))
    tests = tmp_path / "alerts.test.yaml"
    tests.write_text(generate._dump(alert_tests.test_file(str(rules))))
    out = subprocess.run(
        [promtool(), "test", "rules", str(tests)], capture_output=True, text=True, check=False
    )
    assert out.returncode != 0
    assert "CeleryStackCounterFlushLag" in out.stdout + out.stderr


def test_every_runbook_url_points_at_a_section_of_docs_runbooks():
    text = (ROOT / "docs/runbooks.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", text, flags=re.M)
    }
    for alert in alerts.alerts():
        url = alert.rule(alerts.Thresholds())["annotations"]["runbook_url"]  # type: ignore[index]
        assert url.startswith(alerts.RUNBOOKS + "#"), alert.name
        assert alert.runbook in anchors, f"{alert.name}: no section #{alert.runbook}"
        assert alert.name in text, f"{alert.name} is not named in docs/runbooks.md"


@pytest.mark.parametrize("stem", sorted(dashboards.DASHBOARDS))
def test_dashboard_panels_query_prometheus(stem):
    board = json.loads((generate.CHART_FILES / "dashboards" / f"{stem}.json").read_text())
    assert board["uid"] == dashboards.DASHBOARDS[stem][1]
    panels = [p for p in board["panels"] if p["type"] != "row"]
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) and 0 not in ids
    assert panels
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)) and all(t["expr"] for t in panel["targets"])


def test_k8s_monitoring_builds_with_kustomize():
    kubectl = ROOT / ".tools/bin/kubectl"
    tool = str(kubectl) if kubectl.exists() else shutil.which("kubectl")
    assert tool, "`make tools` provides kubectl"
    out = subprocess.run(
        [tool, "kustomize", str(ROOT / "k8s/monitoring")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == ["ConfigMap"] * len(dashboards.DASHBOARDS) + ["PrometheusRule"]
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    assert rule["spec"] == alerts.rule_file()


def runbook_sections() -> dict[str, str]:
    text = (ROOT / "docs/runbooks.md").read_text()
    parts = re.split(r"^## (.+)$", text, flags=re.M)
    return {title.strip(): body for title, body in zip(parts[1::2], parts[2::2], strict=True)}


@pytest.mark.parametrize("alert", alerts.alerts(), ids=lambda a: a.name)
def test_each_alerts_runbook_section_says_what_to_check_and_what_to_run(alert):
    body = runbook_sections().get(alert.runbook)
    assert body is not None, f"docs/runbooks.md has no `## {alert.runbook}` section"
    assert f"**{alert.name}**" in body, f"{alert.runbook} does not name {alert.name}"
    assert re.search(r"^Check\b", body, flags=re.M), f"{alert.runbook}: no `Check:` part"
    assert re.search(r"^Do\b", body, flags=re.M), f"{alert.runbook}: no `Do:` part"
    commands = re.findall(r"`([^`]+)`", body)
    runnable = ("kubectl", "celery-stack-", "redis-cli", "helm", "SELECT", "GET ", "POST ")
    assert any(c.startswith(runnable) for c in commands), f"{alert.runbook}: no command to run"


# The panels the issue asks of each dashboard, as words their titles must contain.
REQUIRED_PANELS = {
    "overview": ["Throughput", "Failures", "Backlog", "p50 / p99 per queue", "Workers"],
    "counters": ["Ingest rate", "Flush lag", "Batch size", "Dropped", "fallbacks"],
    "scans": ["Dispatch latency", "duration", "Outcomes", "Dead", "Outbox"],
    "beat-janitor": ["Leader", "Epoch", "Failovers", "lag", "Sweeps"],
}


@pytest.mark.parametrize("stem", sorted(REQUIRED_PANELS))
def test_each_dashboard_has_the_panels_the_issue_lists(stem):
    board = json.loads((generate.CHART_FILES / "dashboards" / f"{stem}.json").read_text())
    titles = [p["title"] for p in board["panels"] if p["type"] != "row"]
    for word in REQUIRED_PANELS[stem]:
        assert any(word.lower() in t.lower() for t in titles), f"{stem}: no {word!r} panel"
