"""The janitor's chart objects (issue 9): the CronJob rendered by default with its safety
settings, its own ServiceAccount and least RBAC, the operator behind janitor.operator.enabled,
the JanitorPolicy CRD, and the rendered CronJob command run for real against a local stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import jmespath
import pytest
import yaml
from chartlib import RELEASE, by_kind, one, render_chart
from sqlalchemy import select

from celery_stack_core.models import JanitorRun
from celery_stack_devstack.pytest_plugin import env_for

FULL = f"{RELEASE}-celery-stack"
CHART = Path(__file__).parents[2] / "charts" / "celery-stack"
OPERATOR = {"janitor": {"operator": {"enabled": True}}}


def cronjob(docs):
    return one(docs, "CronJob", f"{FULL}-janitor")


class TestCronJob:
    def test_rendered_by_default_with_its_safety_settings(self):
        cj = cronjob(render_chart())
        spec = cj["spec"]
        assert spec["concurrencyPolicy"] == "Forbid"
        assert spec["startingDeadlineSeconds"] == 300
        assert (spec["successfulJobsHistoryLimit"], spec["failedJobsHistoryLimit"]) == (3, 3)
        job = spec["jobTemplate"]["spec"]
        assert job["activeDeadlineSeconds"] == 900 and job["backoffLimit"] == 1
        assert job["ttlSecondsAfterFinished"] == 86400
        pod = job["template"]["spec"]
        assert pod["restartPolicy"] == "Never"
        assert pod["serviceAccountName"] == f"{FULL}-janitor"
        assert pod["containers"][0]["command"] == ["celery-stack-janitor", "sweep", "--json"]
        assert [c["name"] for c in pod["initContainers"]] == ["wait-for-migrations"]

    def test_values_shape_the_command(self):
        cj = cronjob(
            render_chart(
                {
                    "janitor": {
                        "sweeps": ["locks", "retention"],
                        "dryRun": True,
                        "schedule": "0 * * * *",
                        "suspend": True,
                    }
                }
            )
        )
        assert cj["spec"]["schedule"] == "0 * * * *" and cj["spec"]["suspend"] is True
        cmd = jmespath.search("spec.jobTemplate.spec.template.spec.containers[0].command", cj)
        assert cmd == [
            "celery-stack-janitor",
            "sweep",
            "--json",
            "--only",
            "locks,retention",
            "--dry-run",
        ]

    def test_least_rbac_pods_get_list_only(self):
        docs = render_chart()
        role = one(docs, "Role", f"{FULL}-janitor")
        assert role["rules"] == [
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}
        ]
        binding = one(docs, "RoleBinding", f"{FULL}-janitor")
        assert binding["subjects"][0]["name"] == f"{FULL}-janitor"
        sa = one(docs, "ServiceAccount", f"{FULL}-janitor")
        assert sa["automountServiceAccountToken"] is False  # the pod opts in, nothing else

    def test_disabled_renders_nothing_of_the_janitor(self):
        docs = render_chart({"janitor": {"enabled": False}})
        names = [d["metadata"]["name"] for d in docs]
        assert not [n for n in names if "janitor" in n and "dashboard" not in n]

    def test_the_schema_refuses_an_unknown_sweep(self):
        from chartlib import RenderError

        with pytest.raises(RenderError):
            render_chart({"janitor": {"sweeps": ["everything"]}})


class TestOperator:
    def test_off_by_default(self):
        assert not [
            d for d in by_kind(render_chart(), "Deployment") if "operator" in d["metadata"]["name"]
        ]

    def test_deployment_rbac_and_job_template(self):
        docs = render_chart(OPERATOR)
        dep = one(docs, "Deployment", f"{FULL}-janitor-operator")
        ctr = dep["spec"]["template"]["spec"]["containers"][0]
        assert ctr["command"] == ["celery-stack-janitor", "operator"]
        assert ctr["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
        assert dep["spec"]["strategy"]["type"] == "Recreate" and dep["spec"]["replicas"] == 1
        role = one(docs, "Role", f"{FULL}-janitor-operator")
        granted = {
            (g, r, v)
            for rule in role["rules"]
            for g in rule["apiGroups"]
            for r in rule["resources"]
            for v in rule["verbs"]
        }
        assert ("batch", "cronjobs", "create") in granted
        assert ("", "pods", "watch") in granted
        assert ("celery-stack.io", "janitorpolicies/status", "patch") in granted
        assert not [x for x in granted if x[2] in ("*", "deletecollection", "escalate", "bind")]
        assert not [x for x in granted if x[1] in ("secrets", "pods/exec", "roles", "rolebindings")]
        template = json.loads(
            one(docs, "ConfigMap", f"{FULL}-janitor-operator")["data"]["job-template.json"]
        )
        assert template["spec"]["template"]["spec"]["serviceAccountName"] == f"{FULL}-janitor"

    def test_crd_in_chart_crds_and_k8s(self):
        crd = yaml.safe_load((CHART / "crds" / "janitorpolicies.yaml").read_text())
        assert crd["spec"]["names"]["kind"] == "JanitorPolicy"
        version = crd["spec"]["versions"][0]
        assert "status" in version["subresources"]
        spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
        assert set(spec) == {"schedule", "sweeps", "thresholds", "dryRun", "suspend"}
        # k8s/crds/ holds the same file for kubectl users (cluster-scoped: not in the base)
        plain = CHART.parents[1] / "k8s" / "crds" / "janitorpolicies.yaml"
        assert plain.read_text() == (CHART / "crds" / "janitorpolicies.yaml").read_text()


async def test_rendered_cronjob_command_runs_against_a_local_stack(settings, clean_db, redis):
    """The CronJob's exact command, run against real Redis and PostgreSQL: its JSON report
    says what it did, and it did it."""
    cj = cronjob(render_chart({"janitor": {"sweeps": ["orphaned-results", "locks"]}}))
    cmd = jmespath.search("spec.jobTemplate.spec.template.spec.containers[0].command", cj)
    gone = uuid.uuid4()
    await redis.set(f"celery-task-meta-scan-{gone}-1", json.dumps({"status": "SUCCESS"}), ex=600)
    await redis.set("celery-task-meta-beat:x:1", json.dumps({"status": "SUCCESS"}))
    exe = str(Path(sys.executable).parent / cmd[0])
    proc = subprocess.run(
        [exe, *cmd[1:]],
        env={**os.environ, **env_for(settings)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["dry_run"] is False
    by_sweep = {s["sweep"]: s for s in report["sweeps"]}
    assert set(by_sweep) == {"orphaned-results", "locks"}
    assert by_sweep["orphaned-results"]["by_action"] == {"delete": 1, "expire": 1}
    assert not await redis.exists(f"celery-task-meta-scan-{gone}-1")
    assert await redis.ttl("celery-task-meta-beat:x:1") > 0
    # ... and recorded each sweep's run, which the maintenance worker exports to Prometheus
    # (the CronJob's pod exits before any scrape: services/janitor/tests/test_run_metrics.py)
    async with clean_db.connect() as conn:
        runs = (
            await conn.execute(select(JanitorRun.sweep, JanitorRun.source, JanitorRun.removed))
        ).all()
    assert sorted(tuple(r) for r in runs) == [("locks", "cli", 0), ("orphaned-results", "cli", 2)]
