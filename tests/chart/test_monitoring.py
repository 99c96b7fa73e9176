"""Monitoring objects of the chart: dashboard ConfigMaps for the Grafana sidecar, the
PrometheusRule behind its Capabilities check (or a render that fails and says why), and the
OTLP endpoint from values. Their content is the generated files in files/monitoring/."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from chartlib import CHART, MONITORING, RenderError, load_all, render_chart, tool

FILES = Path(__file__).resolve().parents[2] / "charts/celery-stack/files/monitoring"
STEMS = sorted(p.stem for p in (FILES / "dashboards").glob("*.json"))


def of_kind(docs, kind):
    return [d for d in docs if d["kind"] == kind]


class TestDashboards:
    def test_one_configmap_per_dashboard_labelled_for_the_sidecar(self):
        maps = {
            d["metadata"]["name"]: d
            for d in of_kind(render_chart(), "ConfigMap")
            if d["metadata"]["labels"].get("grafana_dashboard") == "1"
        }
        assert STEMS == ["beat-janitor", "counters", "overview", "scans"]
        assert sorted(maps) == [f"cs-celery-stack-dashboard-{s}" for s in STEMS]
        for stem in STEMS:
            cm = maps[f"cs-celery-stack-dashboard-{stem}"]
            assert cm["metadata"]["annotations"] == {"grafana_folder": "celery-stack"}
            ((key, body),) = cm["data"].items()
            assert key == f"celery-stack-{stem}.json"
            assert json.loads(body) == json.loads(
                (FILES / "dashboards" / f"{stem}.json").read_text()
            )

    def test_sidecar_label_and_folder_come_from_values(self):
        docs = render_chart(
            {
                "dashboards": {
                    "label": "dash",
                    "labelValue": "yes",
                    "folder": "Jobs",
                    "folderAnnotation": "k8s-sidecar-target-directory",
                }
            }
        )
        maps = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["labels"].get("dash")]
        assert len(maps) == 4
        assert all(m["metadata"]["labels"]["dash"] == "yes" for m in maps)
        assert all(
            m["metadata"]["annotations"] == {"k8s-sidecar-target-directory": "Jobs"} for m in maps
        )

    def test_disabled_renders_none(self):
        docs = render_chart({"dashboards": {"enabled": False}})
        assert not [d for d in of_kind(docs, "ConfigMap") if "dashboard" in d["metadata"]["name"]]


class TestAlerts:
    def test_prometheusrule_holds_the_generated_groups_for_this_namespace(self):
        out = subprocess.run(
            [
                tool("helm"),
                "template",
                "cs",
                str(CHART),
                "--namespace",
                "jobs-prod",
                "--api-versions",
                MONITORING,
                "--set",
                "alerts.enabled=true",
                "--show-only",
                "templates/monitoring/alerts-prometheusrule.yaml",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        (rule,) = of_kind(load_all(out.stdout), "PrometheusRule")
        generated = yaml.safe_load((FILES / "alerts.yaml").read_text())
        assert [g["name"] for g in rule["spec"]["groups"]] == [
            g["name"] for g in generated["groups"]
        ]
        exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
        ksm = [e for e in exprs if "kube_pod_container" in e]
        assert ksm and all('namespace="jobs-prod"' in e for e in ksm)
        assert not any('namespace="celery-stack"' in e for e in exprs)
        assert all(
            r.get("annotations", {}).get("runbook_url")
            for g in rule["spec"]["groups"]
            for r in g["rules"]
        )

    def test_labels_and_runbook_base_come_from_values(self):
        docs = render_chart(
            {
                "alerts": {
                    "enabled": True,
                    "labels": {"release": "kps"},
                    "runbookBaseUrl": "https://wiki.example/runbooks",
                }
            },
            api_versions=(MONITORING,),
        )
        (rule,) = of_kind(docs, "PrometheusRule")
        assert rule["metadata"]["labels"]["release"] == "kps"
        urls = {r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"]}
        assert urls and all(u.startswith("https://wiki.example/runbooks#") for u in urls)

    def test_enabled_without_the_operator_api_fails_with_a_message(self):
        with pytest.raises(RenderError) as info:
            render_chart({"alerts": {"enabled": True}})
        assert "alerts.enabled" in str(info.value)
        assert "k8s/monitoring/prometheus-rules.yaml" in str(info.value)

    def test_disabled_renders_none_even_with_the_operator(self):
        assert not of_kind(render_chart(api_versions=(MONITORING,)), "PrometheusRule")


def test_otlp_endpoint_is_set_from_values():
    docs = render_chart({"otel": {"endpoint": "http://collector.observability:4318"}})
    data = {}
    for d in of_kind(docs, "ConfigMap"):
        data.update(d.get("data", {}))
    assert data["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://collector.observability:4318"


@pytest.mark.parametrize("flower", [False, True])
def test_task_events_follow_flower(flower):
    """Only Flower reads task events; our metrics come from signals."""
    values = {"flower": {"enabled": True, "basicAuthSecret": "flower-auth"}} if flower else {}
    data = {}
    for d in of_kind(render_chart(values), "ConfigMap"):
        data.update(d.get("data", {}))
    assert data["CELERY_TASK_EVENTS"] == str(flower).lower()
