"""Render assertions for every promise of the chart (issue 5, DESIGN "The chart").

One class per component/template, as in the Airflow chart's tests: render with `helm template`
(cached), pick objects, assert with jmespath.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import jmespath
import pytest
from chartlib import (
    EXISTING_SECRETS,
    KEDA,
    MONITORING,
    RELEASE,
    RenderError,
    by_kind,
    containers,
    one,
    pod_specs,
    render_chart,
)

FULL = f"{RELEASE}-celery-stack"
QUEUES = ("counters", "scans", "maintenance")
FLOWER_ON = {"flower": {"enabled": True, "basicAuthSecret": "flower-auth"}}
# beat elects through a Lease when it may reach the API server's own addresses
LEASE = {"networkPolicy": {"kubeAPIServerCIDRs": ["172.20.0.1/32"]}}
ENTRYPOINTS = {
    "celery-stack-api",
    "celery-stack-worker-counters",
    "celery-stack-worker-scans",
    "celery-stack-worker-maintenance",
    "celery-stack-beat",
    "celery-stack-migrate",
    "celery-stack-janitor",
    "python",  # the chart's own scripts (files/*.py) run by the image's Python
}


def worker(docs: list[dict[str, Any]], queue: str) -> dict[str, Any]:
    return one(docs, "Deployment", f"{FULL}-worker-{queue}")


def container(doc: dict[str, Any], name: str) -> dict[str, Any]:
    spec = doc["spec"]["template"]["spec"] if doc["kind"] != "Pod" else doc["spec"]
    found = [c for c in containers(spec) if c["name"] == name]
    assert len(found) == 1, name
    return found[0]


def env_of(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def config(docs: list[dict[str, Any]]) -> dict[str, str]:
    data: dict[str, str] = one(docs, "ConfigMap", f"{FULL}-config")["data"]
    return data


def secret_data(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    raw = one(docs, "Secret", name)["data"]
    return {k: base64.b64decode(v).decode() for k, v in raw.items()}


def arg_after(cmd: list[str], flag: str) -> str:
    return cmd[cmd.index(flag) + 1]


def render_error(values: dict[str, Any]) -> str:
    with pytest.raises(RenderError) as info:
        render_chart(values)
    return str(info.value)


class TestWorkers:
    def test_one_deployment_per_queue_entry(self):
        docs = render_chart()
        workers = [d for d in by_kind(docs, "Deployment") if "-worker-" in d["metadata"]["name"]]
        assert sorted(d["metadata"]["name"] for d in workers) == sorted(
            f"{FULL}-worker-{q}" for q in QUEUES
        )

    def test_adding_a_queue_renders_from_values(self):
        # The chart side of a new queue (its registry entry in libs/core queues.py is the other
        # half: libs/core/tests/test_queue_added.py).
        values = {
            "queues": {
                "reports": {
                    "command": "celery-stack-worker-maintenance",
                    "softTimeLimit": 80,
                    "timeLimit": 90,
                }
            }
        }
        docs = render_chart(values)
        d = worker(docs, "reports")
        cmd = container(d, "worker")["command"]
        assert cmd[0] == "celery-stack-worker-maintenance"
        assert arg_after(cmd, "--concurrency") == "2"  # from queueDefaults
        assert d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == 90 + 30
        cfg = config(docs)
        assert (cfg["REPORTS_TIME_LIMIT"], cfg["REPORTS_QUEUES"]) == ("90", "reports")
        assert one(docs, "PodDisruptionBudget", f"{FULL}-worker-reports")

    def test_new_queue_inherits_defaults_but_refuses_bad_limits(self):
        # queueDefaults.softTimeLimit (240) is not below timeLimit 90: the check names the queue.
        err = render_error({"queues": {"reports": {"command": "x", "timeLimit": 90}}})
        assert "queues.reports: softTimeLimit (240) must be below timeLimit (90)" in err

    @pytest.mark.parametrize("queue", QUEUES)
    def test_each_queue_can_be_turned_off(self, queue):
        docs = render_chart({"queues": {queue: {"enabled": False}}}, api_versions=(KEDA,))
        names = {d["metadata"]["name"] for d in docs}
        assert f"{FULL}-worker-{queue}" not in names
        others = [q for q in QUEUES if q != queue]
        for q in others:
            assert worker(docs, q)

    def test_worker_options_come_from_values(self):
        docs = render_chart(
            {
                "queues": {
                    "scans": {
                        "concurrency": 7,
                        "prefetchMultiplier": 2,
                        "maxTasksPerChild": 11,
                        "maxMemoryPerChild": 123456,
                        "softTimeLimit": 100,
                        "timeLimit": 120,
                        "pool": "prefork",  # the only pool accepted (test_platform.py)
                        "queues": ["scans", "scans-priority"],
                        "extraArgs": ["--without-gossip"],
                    }
                }
            }
        )
        cmd = container(worker(docs, "scans"), "worker")["command"]
        assert cmd[0] == "celery-stack-worker-scans"
        assert arg_after(cmd, "--concurrency") == "7"
        assert arg_after(cmd, "--max-tasks-per-child") == "11"
        assert arg_after(cmd, "--max-memory-per-child") == "123456"
        assert arg_after(cmd, "--pool") == "prefork"
        assert cmd[-1] == "--without-gossip"
        # One source: -Q, prefetch and time limits reach the worker through the ConfigMap only
        # (the entrypoint builds its argv from them and refuses them as arguments).
        for flag in ("-Q", "--prefetch-multiplier", "--soft-time-limit", "--time-limit"):
            assert flag not in cmd
        cfg = config(docs)
        assert (cfg["SCANS_SOFT_TIME_LIMIT"], cfg["SCANS_TIME_LIMIT"]) == ("100", "120")
        assert (cfg["SCANS_PREFETCH"], cfg["SCANS_QUEUES"]) == ("2", "scans,scans-priority")

    @pytest.mark.parametrize("arg", ["-Q", "--prefetch-multiplier=4", "--time-limit", "-l"])
    def test_extra_args_cannot_override_the_queue_settings(self, arg):
        err = render_error({"queues": {"scans": {"extraArgs": [arg, "9"]}}})
        assert f"queues.scans.extraArgs: {arg} is set by the queue's own keys" in err

    def test_zero_child_limits_leave_the_flags_out(self):
        docs = render_chart(
            {"queues": {"counters": {"maxTasksPerChild": 0, "maxMemoryPerChild": 0}}}
        )
        cmd = container(worker(docs, "counters"), "worker")["command"]
        assert "--max-tasks-per-child" not in cmd
        assert "--max-memory-per-child" not in cmd

    @pytest.mark.parametrize("queue", QUEUES)
    def test_grace_covers_the_hard_limit_plus_margin(self, queue):
        docs = render_chart()
        spec = worker(docs, queue)["spec"]["template"]["spec"]
        hard = int(config(docs)[f"{queue.upper()}_TIME_LIMIT"])
        assert spec["terminationGracePeriodSeconds"] >= hard + 10
        assert spec["terminationGracePeriodSeconds"] > float(
            config(docs)["CELERY_SOFT_SHUTDOWN_TIMEOUT"]
        )
        assert (
            int(config(docs)["CELERY_VISIBILITY_TIMEOUT"]) > spec["terminationGracePeriodSeconds"]
        )

    @pytest.mark.parametrize("queue", QUEUES)
    def test_prestop_stops_consuming_this_pods_queues(self, queue):
        c = container(worker(render_chart(), queue), "worker")
        assert jmespath.search("lifecycle.preStop.exec.command", c) == [
            "python",
            "/opt/celery-stack/scripts/stop_consuming.py",
            queue,
        ]

    @pytest.mark.parametrize("queue", QUEUES)
    def test_probes_use_the_consuming_heartbeat_never_inspect_ping(self, queue):
        docs = render_chart()
        c = container(worker(docs, queue), "worker")
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            cmd = jmespath.search(f"{probe}.exec.command", c)
            assert cmd[:2] == ["python", "/opt/celery-stack/scripts/heartbeat_check.py"], probe
        assert "heartbeat_check.py" in one(docs, "ConfigMap", f"{FULL}-scripts")["data"]
        for _, spec in pod_specs(docs):
            for ctr in containers(spec):
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    words = " ".join(jmespath.search(f"{probe}.exec.command", ctr) or [])
                    assert "inspect" not in words and "ping" not in words

    def test_startup_probe_waits_up_to_startup_timeout(self):
        c = container(
            worker(render_chart({"workerProbes": {"startupTimeout": 600}}), "counters"), "worker"
        )
        p = c["startupProbe"]
        assert p["periodSeconds"] * p["failureThreshold"] == 600

    def test_prometheus_multiprocess_dir_on_the_tmp_emptydir(self):
        docs = render_chart()
        for q in QUEUES:
            d = worker(docs, q)
            c = container(d, "worker")
            assert env_of(c)["PROMETHEUS_MULTIPROC_DIR"].startswith("/tmp/")
            assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]
            vols = {v["name"]: v for v in d["spec"]["template"]["spec"]["volumes"]}
            assert "emptyDir" in vols["tmp"]
            assert c["ports"] == [{"name": "metrics", "containerPort": 9808, "protocol": "TCP"}]
        assert config(docs)["METRICS_PORT"] == "9808"

    def test_pdb_and_topology_spread_per_queue(self):
        docs = render_chart()
        for q in ("counters", "scans"):
            pdb = one(docs, "PodDisruptionBudget", f"{FULL}-worker-{q}")
            assert pdb["spec"]["maxUnavailable"] == 1
            assert (
                pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
                == f"worker-{q}"
            )
            spread = worker(docs, q)["spec"]["template"]["spec"]["topologySpreadConstraints"]
            assert {s["topologyKey"] for s in spread} == {
                "kubernetes.io/hostname",
                "topology.kubernetes.io/zone",
            }
        # maintenance runs one replica: a PDB would block node drains
        assert not [
            d
            for d in by_kind(docs, "PodDisruptionBudget")
            if d["metadata"]["name"].endswith("maintenance")
        ]

    def test_resources_per_queue_and_global_scheduling_fallback(self):
        docs = render_chart(
            {
                "nodeSelector": {"pool": "general"},
                "queues": {"scans": {"nodeSelector": {"pool": "scanners"}}},
            }
        )
        assert worker(docs, "scans")["spec"]["template"]["spec"]["nodeSelector"] == {
            "pool": "scanners"
        }
        assert worker(docs, "counters")["spec"]["template"]["spec"]["nodeSelector"] == {
            "pool": "general"
        }
        res = container(worker(docs, "counters"), "worker")["resources"]
        assert res["requests"]["memory"] and res["limits"]["memory"]


class TestCheckValues:
    """The render-time `fail` for what JSON schema cannot compare."""

    def test_visibility_timeout_not_above_hard_limit_fails(self):
        err = render_error({"celery": {"visibilityTimeout": 300}})
        assert (
            "celery.visibilityTimeout (300) must be larger than queues.maintenance.timeLimit" in err
        )

    def test_visibility_timeout_not_above_grace_fails(self):
        # above every hard limit (300) but not above scans' grace (300 + 30)
        err = render_error({"celery": {"visibilityTimeout": 320}})
        assert "must be larger than the grace period of queue maintenance" in err

    def test_visibility_timeout_equal_to_grace_fails(self):
        err = render_error({"celery": {"visibilityTimeout": 330}})
        assert "grace period" in err

    def test_just_above_every_grace_renders(self):
        assert render_chart({"celery": {"visibilityTimeout": 331}})

    def test_a_longer_queue_needs_a_longer_visibility(self):
        err = render_error({"queues": {"scans": {"softTimeLimit": 3500, "timeLimit": 3600}}})
        assert "queues.scans.timeLimit (3600)" in err

    def test_soft_limit_must_be_below_hard_limit(self):
        err = render_error({"queues": {"counters": {"softTimeLimit": 60, "timeLimit": 60}}})
        assert "queues.counters: softTimeLimit (60) must be below timeLimit (60)" in err

    def test_soft_shutdown_must_end_before_sigkill(self):
        err = render_error({"celery": {"softShutdownTimeout": 30}})
        assert "celery.softShutdownTimeout (30) must be below" in err

    def test_disabled_queue_is_not_checked(self):
        assert render_chart(
            {"queues": {"scans": {"enabled": False, "softTimeLimit": 3500, "timeLimit": 3600}}}
        )

    def test_schema_refuses_a_non_integer_visibility_timeout(self):
        err = render_error({"celery": {"visibilityTimeout": "3600"}})
        assert "visibilityTimeout" in err

    def test_schema_refuses_a_too_small_shutdown_margin(self):
        err = render_error({"queues": {"counters": {"shutdownMargin": 5}}})
        assert "shutdownMargin" in err

    def test_schema_refuses_unknown_keys(self):
        assert "additional properties" in render_error({"queues": {"counters": {"concurency": 2}}})
        assert "additional properties" in render_error({"api": {"replica": 2}})

    def test_production_without_any_token_source_fails(self):
        err = render_error({"auth": {"generateAdminToken": False}})
        assert "production needs API tokens" in err


class TestApi:
    def test_deployment_service_probes(self):
        docs = render_chart()
        d = one(docs, "Deployment", f"{FULL}-api")
        c = container(d, "api")
        assert c["command"][:2] == ["celery-stack-api", "serve"]
        assert jmespath.search("readinessProbe.httpGet.path", c) == "/readyz"
        assert jmespath.search("livenessProbe.httpGet.path", c) == "/healthz"
        assert jmespath.search("startupProbe.httpGet.path", c) == "/healthz"
        svc = one(docs, "Service", f"{FULL}-api")
        assert svc["spec"]["ports"][0]["targetPort"] == "http"
        assert svc["spec"]["selector"] == d["spec"]["selector"]["matchLabels"]
        assert "replicas" not in d["spec"]  # the HPA owns it
        hpa = one(docs, "HorizontalPodAutoscaler", f"{FULL}-api")
        assert hpa["spec"]["scaleTargetRef"]["name"] == f"{FULL}-api"
        assert jmespath.search("spec.metrics[0].resource.name", hpa) == "cpu"

    def test_ingress_optional(self):
        assert not by_kind(render_chart(), "Ingress")
        docs = render_chart({"api": {"ingress": {"enabled": True, "hosts": ["a.example.com"]}}})
        ing = one(docs, "Ingress", f"{FULL}-api")
        assert jmespath.search("spec.rules[0].host", ing) == "a.example.com"
        assert (
            jmespath.search("spec.rules[0].http.paths[0].backend.service.name", ing)
            == f"{FULL}-api"
        )

    def test_no_hpa_means_fixed_replicas(self):
        docs = render_chart({"api": {"autoscaling": {"enabled": False}, "replicas": 3}})
        assert one(docs, "Deployment", f"{FULL}-api")["spec"]["replicas"] == 3
        assert not [
            d
            for d in by_kind(docs, "HorizontalPodAutoscaler")
            if d["metadata"]["name"].endswith("-api")
        ]


class TestBeat:
    def test_two_replicas_with_lease_election(self):
        docs = render_chart(LEASE)
        d = one(docs, "Deployment", f"{FULL}-beat")
        assert d["spec"]["replicas"] == 2
        assert d["spec"]["strategy"]["type"] == "RollingUpdate"
        assert d["spec"]["strategy"]["rollingUpdate"]["maxSurge"] == 0
        c = container(d, "beat")
        # a leader that loses the Lease re-execs as a fresh standby instead of exiting 3 into
        # CrashLoopBackOff (both pods during an API-server outage = no scheduler for minutes)
        assert c["command"] == ["celery-stack-beat", "run", "--restart-on-loss"]
        env = env_of(c)
        assert env["BEAT_ELECTION"] == "kubernetes"
        assert env["BEAT_LEASE_NAME"] == f"{FULL}-beat"
        assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        assert env["POD_UID"] == {"fieldRef": {"fieldPath": "metadata.uid"}}

    def test_probes_are_http_on_the_metrics_port_without_redis(self):
        docs = render_chart({"metrics": {"port": 9900}})
        c = container(one(docs, "Deployment", f"{FULL}-beat"), "beat")
        # beat serves /healthz on METRICS_PORT: the probe's named port must be that port
        assert {p["name"]: p["containerPort"] for p in c["ports"]}["metrics"] == 9900
        assert config(docs)["METRICS_PORT"] == "9900"
        # liveness = the leader ticks (standby: campaigns), served by the process itself:
        # no Python process per period, no Redis read
        http = {"path": "/healthz", "port": "metrics"}
        assert c["livenessProbe"]["httpGet"] == http
        assert "exec" not in c["livenessProbe"]
        # readiness: the same endpoint, so a Redis blip cannot make both replicas NotReady
        assert c["readinessProbe"]["httpGet"] == http
        assert "exec" not in c["readinessProbe"]
        c = container(
            one(render_chart({"beat": {"readinessProbe": False}}), "Deployment", f"{FULL}-beat"),
            "beat",
        )
        assert "readinessProbe" not in c
        assert c["livenessProbe"]["httpGet"] == http

    def test_one_replica_uses_recreate(self):
        d = one(render_chart({"beat": {"replicas": 1}}), "Deployment", f"{FULL}-beat")
        assert d["spec"]["replicas"] == 1
        assert d["spec"]["strategy"] == {"type": "Recreate"}

    def test_rbac_least_privilege_on_its_own_lease(self):
        docs = render_chart({"beat": {"leaseName": "my-beat"}, **LEASE})
        role = one(docs, "Role", f"{FULL}-beat")
        assert role["rules"] == [
            {
                "apiGroups": ["coordination.k8s.io"],
                "resources": ["leases"],
                "resourceNames": ["my-beat"],
                "verbs": ["get", "update"],
            },
            # create cannot be limited by name (Kubernetes RBAC), so it stands alone
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        ]
        binding = one(docs, "RoleBinding", f"{FULL}-beat")
        assert binding["roleRef"]["name"] == f"{FULL}-beat"
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": f"{FULL}-beat", "namespace": "celery-stack"}
        ]
        # beat's, the admin-token hook's (tests/chart/test_platform.py) and the janitor's (pods
        # get/list, tests/chart/test_janitor.py) Roles; nothing cluster-wide
        assert {r["metadata"]["name"] for r in by_kind(docs, "Role")} == {
            f"{FULL}-beat",
            f"{FULL}-admin-token",
            f"{FULL}-janitor",
        }
        assert not by_kind(docs, "ClusterRole") and not by_kind(docs, "ClusterRoleBinding")
        env = env_of(container(one(docs, "Deployment", f"{FULL}-beat"), "beat"))
        assert env["BEAT_LEASE_NAME"] == "my-beat"

    def test_only_beat_mounts_a_service_account_token(self):
        docs = render_chart({**FLOWER_ON, **LEASE})
        for name, spec in pod_specs(docs):
            # and the admin-token hook Job, which creates its Secret through the API server, and
            # the janitor CronJob (lists pods to judge lock owners)
            expected = name in (
                f"Deployment/{FULL}-beat",
                f"Job/{FULL}-admin-token",
                f"CronJob/{FULL}-janitor",
            )
            assert spec["automountServiceAccountToken"] is expected, name
        assert (
            one(docs, "Deployment", f"{FULL}-beat")["spec"]["template"]["spec"][
                "serviceAccountName"
            ]
            == f"{FULL}-beat"
        )
        for sa in by_kind(docs, "ServiceAccount"):
            assert sa["automountServiceAccountToken"] is False


class TestMigrations:
    def test_hook_job_by_default(self):
        docs = render_chart()
        job = one(docs, "Job", f"{FULL}-migrations-1")
        ann = job["metadata"]["annotations"]
        assert ann["helm.sh/hook"] == "pre-install,pre-upgrade"
        c = container(job, "migrate")
        assert c["command"] == ["celery-stack-migrate"]
        # a pre-install hook runs before release objects exist: its Secret is a hook too
        env = env_of(c)
        assert env["DATABASE_URL"]["secretKeyRef"]["name"] == f"{FULL}-migrations"
        hook_secret = one(docs, "Secret", f"{FULL}-migrations")
        assert hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"] == "-10"
        assert env["ENVIRONMENT"] == "production"  # settings inline, no ConfigMap needed
        assert secret_data(docs, f"{FULL}-migrations") == secret_data(docs, f"{FULL}-env")

    def test_plain_job_for_argocd_and_flux(self):
        docs = render_chart({"migrations": {"useHelmHooks": False}})
        (job,) = [d for d in by_kind(docs, "Job") if "-migrations-" in d["metadata"]["name"]]
        assert "helm.sh/hook" not in job["metadata"]["annotations"]
        assert (
            env_of(container(job, "migrate"))["DATABASE_URL"]["secretKeyRef"]["name"]
            == f"{FULL}-env"
        )
        assert not [
            d
            for d in docs
            if d["metadata"].get("annotations", {}).get("helm.sh/hook", "").startswith("pre-")
            and "admin-token" not in d["metadata"]["name"]
        ]

    def test_every_pod_that_needs_the_schema_waits_for_it(self):
        docs = render_chart()
        needing = [f"{FULL}-api", *(f"{FULL}-worker-{q}" for q in QUEUES)]
        for name in needing:
            init = one(docs, "Deployment", name)["spec"]["template"]["spec"]["initContainers"]
            assert [c["name"] for c in init] == ["wait-for-migrations"]
            assert init[0]["command"][:2] == [
                "python",
                "/opt/celery-stack/scripts/wait_for_migrations.py",
            ]
        assert (
            "celery-stack-migrate"
            in one(docs, "ConfigMap", f"{FULL}-scripts")["data"]["wait_for_migrations.py"]
        )

    def test_beat_never_waits_for_migrations(self):
        # beat never uses PostgreSQL: a failed migration must not stop the scheduler
        for values in ({}, {"migrations": {"useHelmHooks": False}}):
            spec = one(render_chart(values), "Deployment", f"{FULL}-beat")["spec"]["template"]
            assert "initContainers" not in spec["spec"]

    def test_no_wait_when_turned_off(self):
        docs = render_chart({"migrations": {"waitForMigrations": False}})
        for _, spec in pod_specs(docs):
            assert "initContainers" not in spec


class TestSecrets:
    def test_existing_secrets_are_referenced_and_no_url_is_rendered(self):
        docs = render_chart(EXISTING_SECRETS, api_versions=(KEDA,))
        assert not by_kind(docs, "Secret")
        text = json.dumps(docs)
        assert "redis://" not in text and "postgresql" not in text
        env = env_of(container(worker(docs, "counters"), "worker"))
        assert env["REDIS_URL"] == {"secretKeyRef": {"name": "prod-redis", "key": "url"}}
        assert env["DATABASE_URL"] == {"secretKeyRef": {"name": "prod-db", "key": "url"}}
        assert env["API_TOKENS"] == {"secretKeyRef": {"name": "prod-api", "key": "tokens"}}
        job = by_kind(docs, "Job")[0]
        assert (
            env_of(container(job, "migrate"))["DATABASE_URL"]["secretKeyRef"]["name"] == "prod-db"
        )
        ta = one(docs, "TriggerAuthentication", f"{FULL}-redis")
        assert {r["name"] for r in ta["spec"]["secretTargetRef"]} == {"prod-redis"}

    def test_secrets_never_reach_a_container_through_envfrom(self):
        for _, spec in pod_specs(render_chart()):
            for c in containers(spec):
                for src in c.get("envFrom", []):
                    assert "secretRef" not in src

    def test_given_tokens_are_rendered_and_nothing_generated(self):
        spec = [{"name": "web", "sha256": "b" * 64, "scopes": ["user"]}]
        data = secret_data(render_chart({"auth": {"tokens": spec}}), f"{FULL}-env")
        assert json.loads(data["API_TOKENS"]) == spec
        assert "ADMIN_TOKEN" not in data

    def test_url_secret_carries_keda_address_and_password(self):
        docs = render_chart(
            {"redis": {"url": "redis://:s3cret@redis.db:6380/2"}}, api_versions=(KEDA,)
        )
        data = secret_data(docs, f"{FULL}-env")
        assert (data["REDIS_ADDRESS"], data["REDIS_PASSWORD"]) == ("redis.db:6380", "s3cret")
        ta = one(docs, "TriggerAuthentication", f"{FULL}-redis")
        assert {r["parameter"] for r in ta["spec"]["secretTargetRef"]} == {"address", "password"}


class TestSecurity:
    @pytest.mark.parametrize(
        "values",
        [{}, FLOWER_ON, {"migrations": {"useHelmHooks": False}}],
        ids=["defaults", "flower", "plain-job"],
    )
    def test_every_container_is_locked_down(self, values):
        docs = render_chart(values)
        seen = 0
        for name, spec in pod_specs(docs):
            assert spec["securityContext"]["runAsNonRoot"] is True, name
            assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
            mounts_tmp = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
            assert "tmp" in mounts_tmp, name
            for c in containers(spec):
                seen += 1
                sc = c["securityContext"]
                where = f"{name}/{c['name']}"
                assert sc["runAsNonRoot"] is True, where
                assert sc["readOnlyRootFilesystem"] is True, where
                assert sc["allowPrivilegeEscalation"] is False, where
                assert sc["privileged"] is False, where
                assert sc["capabilities"] == {"drop": ["ALL"]}, where
                assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
                assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"], where
                assert c["resources"]["limits"]["memory"], where
                assert c["resources"]["requests"]["cpu"], where
        assert seen >= 10

    def test_every_command_is_exec_form_without_a_shell(self):
        for name, spec in pod_specs(render_chart(FLOWER_ON)):
            for c in containers(spec):
                cmd = c["command"]
                assert isinstance(cmd, list)
                assert cmd[0] not in ("sh", "bash", "/bin/sh", "/bin/bash"), name
                if c["name"] != "flower":
                    assert cmd[0] in ENTRYPOINTS, (name, cmd)


class TestNetworkPolicy:
    def policies(self, values=None):
        return {d["metadata"]["name"]: d for d in by_kind(render_chart(values), "NetworkPolicy")}

    def test_default_deny_for_every_pod_of_the_release(self):
        deny = self.policies()[f"{FULL}-default-deny"]
        assert deny["spec"]["policyTypes"] == ["Ingress", "Egress"]
        assert "ingress" not in deny["spec"] and "egress" not in deny["spec"]
        sel = deny["spec"]["podSelector"]["matchLabels"]
        assert sel == {
            "app.kubernetes.io/instance": RELEASE,
            "app.kubernetes.io/name": "celery-stack",
        }
        docs = render_chart()
        for d in [*by_kind(docs, "Deployment"), *by_kind(docs, "Job")]:
            labels = d["spec"]["template"]["metadata"]["labels"]
            assert sel.items() <= labels.items(), d["metadata"]["name"]

    def test_egress_to_dns_redis_postgres_only(self):
        stores = self.policies({"networkPolicy": {"storeCIDRs": ["10.20.0.0/16"]}})[
            f"{FULL}-egress-stores"
        ]
        rules = stores["spec"]["egress"]
        assert rules[0] == {
            "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
        }
        # one rule per store, each with its own peers (tests/chart/test_platform.py)
        assert [r["ports"] for r in rules[1:]] == [
            [{"port": 6379, "protocol": "TCP"}],
            [{"port": 5432, "protocol": "TCP"}],
        ]
        assert [r["to"] for r in rules[1:]] == [[{"ipBlock": {"cidr": "10.20.0.0/16"}}]] * 2
        assert len(rules) == 3  # no OTLP rule without an endpoint

    def test_api_ingress_and_its_clients(self):
        pol = self.policies()[f"{FULL}-api"]
        assert pol["spec"]["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}]}]
        peer = {"namespaceSelector": {"matchLabels": {"name": "ingress-nginx"}}}
        pol = self.policies({"api": {"allowedClients": [peer]}})[f"{FULL}-api"]
        froms = pol["spec"]["ingress"][0]["from"]
        assert froms[0] == peer
        assert froms[1]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "test"
        assert len(pol["spec"]["ingress"]) == 1
        prom = {"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}
        pol = self.policies(
            {"api": {"allowedClients": [peer]}, "networkPolicy": {"metricsClients": [prom]}}
        )[f"{FULL}-api"]
        assert pol["spec"]["ingress"][1] == {
            "ports": [{"port": "http", "protocol": "TCP"}],
            "from": [prom],
        }

    def test_scanner_reaches_the_internet_but_not_private_ranges(self):
        pols = self.policies()
        internet = pols[f"{FULL}-worker-scans-internet"]
        assert (
            internet["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
            == "worker-scans"
        )
        block = internet["spec"]["egress"][0]["to"][0]["ipBlock"]
        assert block["cidr"] == "0.0.0.0/0"
        for cidr in (
            "10.0.0.0/8",
            "172.16.0.0/12",
            "192.168.0.0/16",
            "169.254.0.0/16",
            "127.0.0.0/8",
        ):
            assert cidr in block["except"]
        assert [p["port"] for p in internet["spec"]["egress"][0]["ports"]] == [80, 443]
        # no other queue gets internet egress
        assert not [n for n in pols if n.endswith("-internet") and "scans" not in n]

    def test_only_beat_reaches_the_kubernetes_api(self):
        pols = self.policies(LEASE)
        beat = pols[f"{FULL}-beat"]
        assert beat["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "beat"
        assert [p["port"] for p in beat["spec"]["egress"][0]["ports"]] == [443, 6443]
        # the janitor's pods too (pods list; the operator's watches), selected by component
        janitor = pols[f"{FULL}-janitor"]
        assert janitor["spec"]["podSelector"]["matchExpressions"][1]["values"] == [
            "janitor",
            "janitor-operator",
        ]
        # and the run-once admin-token hook (tests/chart/test_platform.py)
        for name, pol in pols.items():
            if name not in (f"{FULL}-beat", f"{FULL}-janitor", f"{FULL}-admin-token"):
                ports = jmespath.search("spec.egress[].ports[].port", pol) or []
                assert 6443 not in ports, name

    def test_kubernetes_api_egress_narrowed_to_its_cidrs(self):
        cidrs = ["172.20.0.1/32", "10.0.0.0/28"]
        beat = self.policies({"networkPolicy": {"kubeAPIServerCIDRs": cidrs}})[f"{FULL}-beat"]
        assert beat["spec"]["egress"] == [
            {
                "ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}],
                "to": [{"ipBlock": {"cidr": c}} for c in cidrs],
            }
        ]

    def test_metrics_ingress_for_workers_and_beat(self):
        pol = self.policies()[f"{FULL}-metrics"]
        roles = pol["spec"]["podSelector"]["matchExpressions"][1]["values"]
        assert roles == ["worker", "beat"]
        assert pol["spec"]["ingress"][0]["ports"] == [{"port": "metrics", "protocol": "TCP"}]

    def test_can_be_turned_off(self):
        assert not self.policies({"networkPolicy": {"enabled": False}})


class TestAutoscaling:
    def test_keda_scaledobject_per_queue_with_priority_lists(self):
        docs = render_chart(api_versions=(KEDA,))
        assert not [
            d
            for d in by_kind(docs, "HorizontalPodAutoscaler")
            if "-worker-" in d["metadata"]["name"]
        ]
        so = one(docs, "ScaledObject", f"{FULL}-worker-counters")
        assert so["spec"]["scaleTargetRef"]["name"] == f"{FULL}-worker-counters"
        lists = jmespath.search("spec.triggers[?type=='redis'].metadata.listName", so)
        assert lists == ["counters", "counters\x06\x163", "counters\x06\x166", "counters\x06\x169"]
        refs = set(jmespath.search("spec.triggers[].authenticationRef.name", so))
        assert refs == {f"{FULL}-redis"}
        ta = one(docs, "TriggerAuthentication", f"{FULL}-redis")
        assert {r["name"] for r in ta["spec"]["secretTargetRef"]} == {f"{FULL}-env"}
        # the maintenance queue does not autoscale by default
        assert not [
            d
            for d in by_kind(docs, "ScaledObject")
            if d["metadata"]["name"].endswith("maintenance")
        ]

    def test_scale_in_guarded_while_tasks_run(self):
        docs = render_chart(
            {
                "queues": {
                    "scans": {
                        "autoscaling": {"scaleDownStabilizationSeconds": 10, "inFlightQuery": "q"}
                    }
                },
                "keda": {"prometheusServerAddress": "http://prom:9090"},
            },
            api_versions=(KEDA,),
        )
        so = one(docs, "ScaledObject", f"{FULL}-worker-scans")
        assert so["spec"]["minReplicaCount"] >= 1
        down = so["spec"]["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"]
        assert down["stabilizationWindowSeconds"] == 300  # raised to the hard time limit
        assert down["policies"] == [{"type": "Pods", "value": 1, "periodSeconds": 60}]
        prom = jmespath.search("spec.triggers[?type=='prometheus'] | [0].metadata", so)
        assert prom == {"serverAddress": "http://prom:9090", "query": "q", "threshold": "2"}

    def test_schema_refuses_scaling_to_zero(self):
        assert "minReplicas" in render_error(
            {"queues": {"scans": {"autoscaling": {"minReplicas": 0}}}}
        )

    def test_hpa_on_cpu_without_keda(self):
        docs = render_chart()
        assert not by_kind(docs, "ScaledObject") and not by_kind(docs, "TriggerAuthentication")
        hpa = one(docs, "HorizontalPodAutoscaler", f"{FULL}-worker-scans")
        assert jmespath.search("spec.metrics[0].resource.name", hpa) == "cpu"
        assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
        assert "replicas" not in worker(docs, "scans")["spec"]

    def test_keda_value_off_forces_hpa(self):
        docs = render_chart({"keda": {"enabled": False}}, api_versions=(KEDA,))
        assert not by_kind(docs, "ScaledObject")
        assert one(docs, "HorizontalPodAutoscaler", f"{FULL}-worker-counters")

    def test_autoscaling_off_means_fixed_replicas(self):
        docs = render_chart(api_versions=(KEDA,))
        assert worker(docs, "maintenance")["spec"]["replicas"] == 1


class TestObservability:
    def test_monitors_when_the_crds_exist(self):
        docs = render_chart(api_versions=(MONITORING,))
        sm = one(docs, "ServiceMonitor", f"{FULL}-api")
        assert sm["spec"]["endpoints"][0]["port"] == "http"
        pm = one(docs, "PodMonitor", f"{FULL}-worker")
        assert pm["spec"]["selector"]["matchLabels"]["celery-stack/role"] == "worker"
        assert one(docs, "PodMonitor", f"{FULL}-beat")
        for d in by_kind(docs, "Deployment"):
            assert "prometheus.io/scrape" not in d["spec"]["template"]["metadata"]["annotations"]

    def test_annotations_otherwise(self):
        docs = render_chart()
        assert not by_kind(docs, "ServiceMonitor") and not by_kind(docs, "PodMonitor")
        ann = worker(docs, "counters")["spec"]["template"]["metadata"]["annotations"]
        assert (ann["prometheus.io/scrape"], ann["prometheus.io/port"]) == ("true", "9808")
        api_ann = one(docs, "Deployment", f"{FULL}-api")["spec"]["template"]["metadata"][
            "annotations"
        ]
        assert api_ann["prometheus.io/port"] == "8000"

    def test_otlp_endpoint_by_value_opens_its_port(self):
        docs = render_chart({"otel": {"endpoint": "http://otel-collector:4318"}})
        assert config(docs)["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector:4318"
        stores = one(docs, "NetworkPolicy", f"{FULL}-egress-stores")
        assert stores["spec"]["egress"][-1] == {"ports": [{"port": 4318, "protocol": "TCP"}]}

    def test_config_change_rolls_the_pods(self):
        a = worker(render_chart(), "counters")["spec"]["template"]["metadata"]["annotations"]
        b = worker(render_chart({"logLevel": "DEBUG"}), "counters")["spec"]["template"]["metadata"][
            "annotations"
        ]
        assert a["checksum/config"] != b["checksum/config"]


class TestFlower:
    def test_off_by_default(self):
        assert not [d for d in render_chart() if "flower" in d["metadata"]["name"]]

    def test_on(self):
        docs = render_chart({"flower": {"enabled": True, "basicAuthSecret": "fa"}})
        d = one(docs, "Deployment", f"{FULL}-flower")
        env = env_of(container(d, "flower"))
        assert env["CELERY_BROKER_URL"]["secretKeyRef"]["key"] == "REDIS_URL"
        assert env["FLOWER_BASIC_AUTH"]["secretKeyRef"]["name"] == "fa"
        assert one(docs, "Service", f"{FULL}-flower")
        assert one(docs, "NetworkPolicy", f"{FULL}-flower")

    def test_refuses_to_render_without_basic_auth(self):
        # every pod of the namespace may reach Flower, which has no auth of its own
        err = render_error({"flower": {"enabled": True}})
        assert "flower.basicAuthSecret" in err and "FLOWER_BASIC_AUTH" in err
        err = render_error({"flower": {"enabled": True}, "networkPolicy": {"enabled": False}})
        assert "flower.basicAuthSecret" in err


class TestHelmTestPod:
    def test_round_trips_every_enabled_queue_and_checks_the_api(self):
        docs = render_chart(
            {
                "queues": {
                    "scans": {"queues": ["scans", "scans-slow"]},
                    "maintenance": {"enabled": False},
                }
            }
        )
        pod = one(docs, "Pod", f"{FULL}-test")
        assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
        cmd = container(pod, "roundtrip")["command"]
        assert cmd[:2] == ["python", "/opt/celery-stack/scripts/roundtrip.py"]
        assert cmd[2] == f"http://{FULL}-api:8000"
        assert cmd[4:] == ["counters", "scans", "scans-slow"]
        assert (
            "celery.accumulate" in one(docs, "ConfigMap", f"{FULL}-scripts")["data"]["roundtrip.py"]
        )


class TestLabelsAndNames:
    def test_recommended_labels_everywhere(self):
        for d in render_chart(api_versions=(KEDA, MONITORING)):
            labels = d["metadata"]["labels"]
            for key in (
                "app.kubernetes.io/name",
                "app.kubernetes.io/instance",
                "app.kubernetes.io/component",
                "helm.sh/chart",
            ):
                assert key in labels, (d["kind"], d["metadata"]["name"], key)
            assert d["metadata"]["namespace"] == "celery-stack"

    def test_sources_follow_component_folders(self):
        for d in render_chart(api_versions=(KEDA, MONITORING)):
            parts = d["__source__"].split("/")
            assert parts[:2] == ["celery-stack", "templates"]
            folder, filename = parts[2], parts[3]
            assert filename.endswith(".yaml")
            assert d["kind"].lower() in filename.replace("-", "").replace(
                ".yaml", ""
            ) or filename.split("-")[-1] in (
                "hpa.yaml",
                "pdb.yaml",
                "pod.yaml",
            ), d["__source__"]
            assert folder in {
                "api",
                "workers",
                "beat",
                "migrations",
                "admin-token",
                "config",
                "flower",
                "networkpolicies",
                "tests",
                "monitoring",
                "janitor",
            }
