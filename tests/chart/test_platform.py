"""Render tests of issue 12 ("deployable for real"): KEDA from real Redis URLs and its scaling
math, GitOps-stable renders, per-component ServiceAccounts, pools the image can run, network
policy peers, PDB eviction of unhealthy pods, and the operator extension points."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import math
import os
import re
import subprocess
import sys
import threading
from typing import Any

import jmespath
import pytest
from chartlib import (
    KEDA,
    RELEASE,
    RenderError,
    by_kind,
    containers,
    helm_template,
    one,
    pod_specs,
    render_chart,
)

FULL = f"{RELEASE}-celery-stack"
REAL_URL = "rediss://default:s3cr%40t@redis.example:6380/2"


def render_error(values: dict[str, Any], **kw: Any) -> str:
    with pytest.raises(RenderError) as info:
        render_chart(values, **kw)
    return str(info.value)


def secret_data(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    raw = one(docs, "Secret", name)["data"]
    return {k: base64.b64decode(v).decode() for k, v in raw.items()}


def desired_replicas(so: dict[str, Any], metrics: dict[str, float]) -> int:
    """KEDA's documented semantics: without scalingModifiers every trigger is its own HPA metric
    and the HPA takes the largest ceil(value / target); with them, one composite metric
    (the formula over the triggers' values by name) against the modifiers' target."""
    spec = so["spec"]
    mods = spec.get("advanced", {}).get("scalingModifiers")
    names = [t.get("name") or f"t{i}" for i, t in enumerate(spec["triggers"])]
    if mods:
        formula = mods["formula"]
        assert re.fullmatch(r"[\w\s+*/().,]+", formula), formula  # arithmetic, max, names
        scope = {**dict.fromkeys(names, 0.0), **metrics}
        value = eval(formula, {"__builtins__": {}, "max": max}, scope)
        return math.ceil(value / float(mods["target"]))
    per = []
    for name, trig in zip(names, spec["triggers"], strict=True):
        target = float(trig["metadata"].get("listLength") or trig["metadata"]["threshold"])
        per.append(math.ceil(metrics.get(name, 0) / target))
    return max(per)


class TestKedaRedis:
    def test_real_url_gives_db_tls_decoded_password_and_username(self):
        docs = render_chart({"redis": {"url": REAL_URL}}, api_versions=(KEDA,))
        so = one(docs, "ScaledObject", f"{FULL}-worker-counters")
        for trig in jmespath.search("spec.triggers[?type=='redis']", so):
            assert trig["metadata"]["databaseIndex"] == "2"
            assert trig["metadata"]["enableTLS"] == "true"
        data = secret_data(docs, f"{FULL}-env")
        assert data["REDIS_ADDRESS"] == "redis.example:6380"
        assert data["REDIS_PASSWORD"] == "s3cr@t"
        assert data["REDIS_USERNAME"] == "default"
        assert data["REDIS_URL"] == REAL_URL  # the services get the URL untouched
        ta = one(docs, "TriggerAuthentication", f"{FULL}-redis")
        params = {r["parameter"]: r["key"] for r in ta["spec"]["secretTargetRef"]}
        assert params == {
            "address": "REDIS_ADDRESS",
            "username": "REDIS_USERNAME",
            "password": "REDIS_PASSWORD",
        }

    @pytest.mark.parametrize(
        ("url", "address", "db", "tls", "user", "password"),
        [
            ("redis://redis-master:6379/0", "redis-master:6379", "0", "false", None, None),
            ("redis://:p%3Ap%25@r", "r:6379", "0", "false", None, "p:p%"),
            ("rediss://u@r:7000", "r:7000", "0", "true", "u", None),
        ],
    )
    def test_url_forms(self, url, address, db, tls, user, password):
        docs = render_chart({"redis": {"url": url}}, api_versions=(KEDA,))
        data = secret_data(docs, f"{FULL}-env")
        assert data["REDIS_ADDRESS"] == address
        assert data.get("REDIS_USERNAME") == user and data.get("REDIS_PASSWORD") == password
        so = one(docs, "ScaledObject", f"{FULL}-worker-scans")
        assert so["spec"]["triggers"][0]["metadata"]["databaseIndex"] == db
        assert so["spec"]["triggers"][0]["metadata"]["enableTLS"] == tls
        ta = one(docs, "TriggerAuthentication", f"{FULL}-redis")
        params = {r["parameter"] for r in ta["spec"]["secretTargetRef"]}
        expected = {"address"} | ({"username"} if user else set())
        assert params == expected | ({"password"} if password else set())

    @pytest.mark.parametrize(
        "keda_redis", [{"databaseIndex": 0}, {"enableTLS": False}], ids=["db", "tls"]
    )
    def test_explicit_values_contradicting_the_url_fail(self, keda_redis):
        err = render_error(
            {"redis": {"url": REAL_URL}, "keda": {"redis": keda_redis}}, api_versions=(KEDA,)
        )
        assert "contradicts" in err and "redis.url" in err

    def test_agreeing_explicit_values_render(self):
        values = {"redis": {"url": REAL_URL}, "keda": {"redis": {"databaseIndex": 2}}}
        assert render_chart(values, api_versions=(KEDA,))

    def test_existing_secret_uses_explicit_values_and_keys(self):
        docs = render_chart(
            {
                "redis": {"existingSecret": "prod-redis"},
                "keda": {"redis": {"databaseIndex": 3, "enableTLS": True, "usernameKey": "user"}},
            },
            api_versions=(KEDA,),
        )
        trig = one(docs, "ScaledObject", f"{FULL}-worker-counters")["spec"]["triggers"][0]
        assert trig["metadata"]["databaseIndex"] == "3"
        assert trig["metadata"]["enableTLS"] == "true"
        ta = one(docs, "TriggerAuthentication", f"{FULL}-redis")
        refs = {r["parameter"]: (r["name"], r["key"]) for r in ta["spec"]["secretTargetRef"]}
        assert refs == {
            "address": ("prod-redis", "REDIS_ADDRESS"),
            "username": ("prod-redis", "user"),
            "password": ("prod-redis", "REDIS_PASSWORD"),
        }

    def test_non_ascii_escape_is_refused_not_mis_decoded(self):
        assert "non-ASCII" in render_error({"redis": {"url": "redis://:%C3%A9@r:6379/0"}})


class TestKedaScalingMath:
    """KEDA gives the HPA one metric per trigger and the HPA takes the max: per-list triggers
    would under-scale a backlog spread over the priority lists by up to their count."""

    def test_backlog_over_priority_lists_is_summed(self):
        so = one(render_chart(api_versions=(KEDA,)), "ScaledObject", f"{FULL}-worker-counters")
        names = [t["name"] for t in so["spec"]["triggers"]]
        assert len(names) == 4 and len(set(names)) == 4
        # 20 waiting in each of 4 lists, target 20 per replica: 4 replicas, not 1
        assert desired_replicas(so, dict.fromkeys(names, 20)) == 4
        assert desired_replicas(so, {names[0]: 100}) == 5

    def test_in_flight_guard_is_part_of_the_one_metric(self):
        values = {
            "queues": {"scans": {"concurrency": 2, "autoscaling": {"inFlightQuery": "q"}}},
            "keda": {"prometheusServerAddress": "http://prom:9090"},
        }
        so = one(render_chart(values, api_versions=(KEDA,)), "ScaledObject", f"{FULL}-worker-scans")
        lists = [t["name"] for t in so["spec"]["triggers"] if t["type"] == "redis"]
        # nothing waiting, 12 tasks running at concurrency 2: 6 replicas stay
        assert desired_replicas(so, {**dict.fromkeys(lists, 0), "inflight": 12}) == 6
        # a backlog of 5 x 4 lists at listLength 5 with 2 running: the backlog wins
        assert desired_replicas(so, {**dict.fromkeys(lists, 5), "inflight": 2}) == 4

    def test_a_queue_with_several_lists_sums_them_all(self):
        values = {
            "queues": {
                "reports": {
                    "command": "celery-stack-worker-maintenance",
                    "queues": ["reports", "reports-bulk"],
                }
            }
        }
        so = one(
            render_chart(values, api_versions=(KEDA,)), "ScaledObject", f"{FULL}-worker-reports"
        )
        names = [t["name"] for t in so["spec"]["triggers"]]
        assert len(names) == 8
        assert desired_replicas(so, dict.fromkeys(names, 10)) == 4  # 80 / 20


class TestGitOps:
    """Argo CD renders with `helm template`, where `lookup` returns nothing: two renders of the
    same values must be identical, or every sync rotates secrets and restarts every pod."""

    def test_two_renders_without_a_cluster_are_identical(self):
        for values in ({}, {"migrations": {"useHelmHooks": False}}):
            assert helm_template(values) == helm_template(values)

    def test_no_token_is_rendered_the_pods_read_the_in_cluster_one(self):
        docs = render_chart()
        assert "ADMIN_TOKEN" not in secret_data(docs, f"{FULL}-env")
        assert "API_TOKENS" not in secret_data(docs, f"{FULL}-env")
        api = one(docs, "Deployment", f"{FULL}-api")["spec"]["template"]["spec"]["containers"][0]
        ref = next(e for e in api["env"] if e["name"] == "API_TOKENS")["valueFrom"]
        assert ref["secretKeyRef"] == {"name": f"{FULL}-admin-token", "key": "API_TOKENS"}
        job = one(docs, "Job", f"{FULL}-admin-token")
        hooks = job["metadata"]["annotations"]
        assert hooks["helm.sh/hook"] == "pre-install,pre-upgrade"
        migrate = next(d for d in by_kind(docs, "Job") if "migrations" in d["metadata"]["name"])
        # the token exists before the migrations hook needs API_TOKENS
        weight = int(migrate["metadata"]["annotations"]["helm.sh/hook-weight"])
        assert int(hooks["helm.sh/hook-weight"]) < weight
        role = one(docs, "Role", f"{FULL}-admin-token")
        assert role["rules"][0]["resourceNames"] == [f"{FULL}-admin-token"]

    @pytest.mark.parametrize(
        "auth",
        [
            {"tokens": [{"name": "a", "sha256": "0" * 64, "scopes": ["user"]}]},
            {"existingSecret": "s"},
        ],
    )
    def test_no_token_job_when_tokens_are_given(self, auth):
        docs = render_chart({"auth": auth})
        assert not [d for d in docs if "admin-token" in d["metadata"]["name"]]

    def test_plain_migrations_job_is_named_after_its_spec(self):
        """A Job's pod template is immutable: whatever changes it (a new image, but also a log
        level, resources, annotations) must come with a new name, or the next apply fails with
        "field is immutable" and every later sync with it; values that leave it alone keep the
        name, so a re-sync changes nothing."""

        def job(values: dict[str, Any]) -> dict[str, Any]:
            docs = render_chart({"migrations": {"useHelmHooks": False}, **values})
            (found,) = [d for d in by_kind(docs, "Job") if "migrations" in d["metadata"]["name"]]
            return found

        variants = [
            {},
            {"image": {"tag": "0.2.0"}},
            {"logLevel": "DEBUG"},
            {"migrations": {"resources": {"limits": {"memory": "512Mi"}}}},
            {"podAnnotations": {"team": "jobs"}},
            {"api": {"replicas": 5}},  # not the Job's business
        ]
        jobs = [job(v) for v in variants]
        for a in jobs:
            for b in jobs:
                same_name = a["metadata"]["name"] == b["metadata"]["name"]
                assert same_name == (a["spec"] == b["spec"]), (a["metadata"], b["metadata"])
        assert jobs[0]["metadata"]["name"] == jobs[-1]["metadata"]["name"]
        a = jobs[0]
        assert "ttlSecondsAfterFinished" not in a["spec"]  # a GitOps tool would recreate it
        assert a["metadata"]["annotations"]["argocd.argoproj.io/sync-wave"] == "-1"
        assert "helm.sh/hook" not in a["metadata"]["annotations"]


class TestAdminTokenScript:
    """files/admin_token.py against a real HTTP server that answers like the API server's
    Secret endpoints: created once, kept afterwards, the digest matches the token."""

    def test_creates_once_then_keeps(self, tmp_path):
        store: dict[str, dict[str, Any]] = {}
        posts: list[dict[str, Any]] = []

        class Api(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = self.path.rsplit("/", 1)[1]
                assert self.headers["Authorization"] == "Bearer sa-token"
                self._answer(200 if name in store else 404, store.get(name, {}))

            def do_POST(self) -> None:
                assert self.path == "/api/v1/namespaces/ns/secrets"
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                posts.append(body)
                store[body["metadata"]["name"]] = body
                self._answer(201, body)

            def _answer(self, code: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Api)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        (tmp_path / "token").write_text("sa-token\n")
        env = {
            **os.environ,
            "KUBE_API": f"http://127.0.0.1:{server.server_address[1]}",
            "KUBE_TOKEN_FILE": str(tmp_path / "token"),
            "KUBE_NAMESPACE": "ns",
        }
        # the command exactly as the Job renders it (python -c <script> <secret name>)
        job = one(render_chart(), "Job", f"{FULL}-admin-token")
        cmd = job["spec"]["template"]["spec"]["containers"][0]["command"]
        try:
            for _ in range(2):
                proc = subprocess.run(
                    [sys.executable, *cmd[1:]], env=env, capture_output=True, text=True, timeout=30
                )
                assert proc.returncode == 0, proc.stderr
        finally:
            server.shutdown()
        assert len(posts) == 1  # the second run kept the token
        data = {k: base64.b64decode(v).decode() for k, v in posts[0]["data"].items()}
        (spec,) = json.loads(data["API_TOKENS"])
        assert spec["sha256"] == hashlib.sha256(data["ADMIN_TOKEN"].encode()).hexdigest()
        assert spec["scopes"] == ["user", "admin"] and len(data["ADMIN_TOKEN"]) >= 32


def pod_spec(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, kind, name)["spec"]["template"]["spec"]
    return spec


class TestServiceAccounts:
    LEASE = {"networkPolicy": {"kubeAPIServerCIDRs": ["172.20.0.1/32"]}}

    def test_create_false_never_binds_the_lease_role_to_default(self):
        values = {"serviceAccount": {"create": False}, **self.LEASE}
        assert "serviceAccount.name.beat" in render_error(values)
        values["serviceAccount"]["name"] = {"beat": "beat-sa", "adminToken": "token-sa"}
        docs = render_chart(values)
        binding = one(docs, "RoleBinding", f"{FULL}-beat")
        assert binding["subjects"][0]["name"] == "beat-sa"
        assert pod_spec(docs, "Deployment", f"{FULL}-beat")["serviceAccountName"] == "beat-sa"
        token = one(docs, "RoleBinding", f"{FULL}-admin-token")
        assert token["subjects"][0]["name"] == "token-sa"
        assert not by_kind(docs, "ServiceAccount")  # nothing created
        # components without RBAC may run as the namespace's default
        assert pod_spec(docs, "Deployment", f"{FULL}-api")["serviceAccountName"] == "default"

    def test_janitor_and_its_operator_bind_their_roles_to_named_accounts(self):
        values: dict[str, Any] = {
            "serviceAccount": {"create": False},
            "janitor": {"operator": {"enabled": True}},
        }
        assert "serviceAccount.name.janitorOperator" in render_error(values)
        values["serviceAccount"]["name"] = {
            "adminToken": "t",
            "janitor": "sweeper",
            "janitorOperator": "reconciler",
        }
        docs = render_chart(values)
        for component, account in (("janitor", "sweeper"), ("janitor-operator", "reconciler")):
            binding = one(docs, "RoleBinding", f"{FULL}-{component}")
            assert binding["subjects"][0]["name"] == account
        cron = one(docs, "CronJob", f"{FULL}-janitor")["spec"]["jobTemplate"]["spec"]["template"]
        assert cron["spec"]["serviceAccountName"] == "sweeper"
        operator = pod_spec(docs, "Deployment", f"{FULL}-janitor-operator")
        assert operator["serviceAccountName"] == "reconciler"
        assert not by_kind(docs, "ServiceAccount")  # existing accounts: nothing created
        # created under the given names
        values["serviceAccount"]["create"] = True
        created = {sa["metadata"]["name"] for sa in by_kind(render_chart(values), "ServiceAccount")}
        assert {"sweeper", "reconciler"} <= created

    def test_named_accounts_are_created_under_their_names(self):
        names = {"api": "web", "worker": "jobs", "migrations": "schema"}
        docs = render_chart({"serviceAccount": {"name": names}})
        created = {sa["metadata"]["name"] for sa in by_kind(docs, "ServiceAccount")}
        assert {"web", "jobs", "schema", f"{FULL}-beat"} <= created
        assert pod_spec(docs, "Deployment", f"{FULL}-api")["serviceAccountName"] == "web"
        spec = pod_spec(docs, "Deployment", f"{FULL}-worker-scans")
        assert spec["serviceAccountName"] == "jobs"
        assert pod_spec(docs, "Job", f"{FULL}-migrations-1")["serviceAccountName"] == "schema"


class TestBeatApiServerEgress:
    def test_default_never_opens_the_api_server_ports_to_any_address(self):
        docs = render_chart()
        beat = one(docs, "Deployment", f"{FULL}-beat")
        env = {
            e["name"]: e.get("value")
            for e in beat["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        assert env["BEAT_ELECTION"] == "redis"  # no API server to reach: the Redis lease
        assert beat["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
        names = {p["metadata"]["name"] for p in by_kind(docs, "NetworkPolicy")}
        assert f"{FULL}-beat" not in names
        assert not [r for r in by_kind(docs, "Role") if r["metadata"]["name"] == f"{FULL}-beat"]

    def test_lease_with_cidrs_or_without_network_policies(self):
        cidrs = {"networkPolicy": {"kubeAPIServerCIDRs": ["172.20.0.1/32"]}}
        for values in (cidrs, {"networkPolicy": {"enabled": False}}):
            beat = one(render_chart(values), "Deployment", f"{FULL}-beat")
            env = beat["spec"]["template"]["spec"]["containers"][0]["env"]
            assert {"name": "BEAT_ELECTION", "value": "kubernetes"} in env

    def test_forced_lease_without_cidrs_fails(self):
        err = render_error({"beat": {"election": "kubernetes"}})
        assert "kubeAPIServerCIDRs" in err


class TestPool:
    @pytest.mark.parametrize("pool", ["gevent", "eventlet", "solo", "threads"])
    def test_only_the_pool_that_enforces_time_limits_is_accepted(self, pool):
        err = render_error({"queues": {"scans": {"pool": pool}}})
        assert "pool" in err

    def test_prefork(self):
        docs = render_chart({"queueDefaults": {"pool": "prefork"}})
        cmd = pod_spec(docs, "Deployment", f"{FULL}-worker-scans")["containers"][0]["command"]
        assert cmd[cmd.index("--pool") + 1] == "prefork"


class TestStorePeersAndPdbs:
    def test_in_cluster_stores_by_pod_and_namespace_selectors(self):
        redis_peer = {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "data"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "redis"}},
        }
        pg_peer = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "postgresql"}}}
        docs = render_chart(
            {"networkPolicy": {"redisPeers": [redis_peer], "databasePeers": [pg_peer]}}
        )
        pol = one(docs, "NetworkPolicy", f"{FULL}-egress-stores")
        rules = {r["ports"][0]["port"]: r.get("to") for r in pol["spec"]["egress"][1:]}
        assert rules == {6379: [redis_peer], 5432: [pg_peer]}

    def test_cidrs_apply_to_both_stores_and_nothing_means_any_address(self):
        cidr = {"networkPolicy": {"storeCIDRs": ["10.1.0.0/16"]}}
        pol = one(render_chart(cidr), "NetworkPolicy", f"{FULL}-egress-stores")
        tos = [r["to"] for r in pol["spec"]["egress"][1:]]
        assert tos == [[{"ipBlock": {"cidr": "10.1.0.0/16"}}]] * 2
        pol = one(render_chart(), "NetworkPolicy", f"{FULL}-egress-stores")
        assert all("to" not in r for r in pol["spec"]["egress"][1:])

    def test_every_pdb_evicts_unhealthy_pods(self):
        pdbs = by_kind(render_chart(), "PodDisruptionBudget")
        assert len(pdbs) >= 3
        for pdb in pdbs:
            assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow", pdb["metadata"]


CA = {"name": "ca", "configMap": {"name": "corp-ca"}}
CA_MOUNT = {"name": "ca", "mountPath": "/etc/corp-ca", "readOnly": True}
SIDECAR = {"name": "proxy", "image": "envoyproxy/envoy:v1.30", "resources": {}}
INIT = {"name": "warm", "image": "busybox:1.36", "command": ["true"]}


def ext(kinds: tuple[str, ...] = ("liveness",)) -> dict[str, Any]:
    return {
        "extraEnv": [{"name": "E", "value": "1"}],
        "extraEnvFrom": [{"configMapRef": {"name": "extra"}}],
        "extraVolumes": [CA],
        "extraVolumeMounts": [CA_MOUNT],
        "sidecars": [SIDECAR],
        "extraInitContainers": [INIT],
        "podAnnotations": {"team": "jobs"},
        "probes": {k: {"periodSeconds": 42} for k in kinds},
    }


class TestExtensionPoints:
    """Bitnami/Airflow-style extension points per component (issue 12 item 8)."""

    @pytest.mark.parametrize(
        ("values", "kind", "name", "container"),
        [
            ({"api": ext()}, "Deployment", "api", "api"),
            ({"beat": ext()}, "Deployment", "beat", "beat"),
            ({"queueDefaults": ext()}, "Deployment", "worker-counters", "worker"),
            ({"queues": {"scans": ext()}}, "Deployment", "worker-scans", "worker"),
        ],
        ids=["api", "beat", "all-queues", "one-queue"],
    )
    def test_per_component(self, values, kind, name, container):
        doc = one(render_chart(values), kind, f"{FULL}-{name}")
        pod = doc["spec"]["template"]
        spec = pod["spec"]
        main = next(c for c in spec["containers"] if c["name"] == container)
        assert {"configMapRef": {"name": "extra"}} in main["envFrom"]
        assert {"name": "E", "value": "1"} in main["env"]
        assert CA in spec["volumes"] and CA_MOUNT in main["volumeMounts"]
        assert SIDECAR in spec["containers"]
        assert spec["initContainers"][-1] == INIT
        assert pod["metadata"]["annotations"]["team"] == "jobs"
        assert main["livenessProbe"]["periodSeconds"] == 42
        # the rest of the chart's probe is kept
        assert "exec" in main["livenessProbe"] or "httpGet" in main["livenessProbe"]

    def test_one_queue_leaves_the_others_alone(self):
        docs = render_chart({"queues": {"scans": ext()}})
        spec = one(docs, "Deployment", f"{FULL}-worker-counters")["spec"]["template"]["spec"]
        assert [c["name"] for c in spec["containers"]] == ["worker"]

    def test_probe_handler_override_replaces_the_handler(self):
        probe = {"tcpSocket": {"port": 8000}}
        docs = render_chart({"api": {"probes": {"readiness": probe}}})
        api = pod_spec(docs, "Deployment", f"{FULL}-api")["containers"][0]
        assert api["readinessProbe"]["tcpSocket"] == {"port": 8000}
        assert "httpGet" not in api["readinessProbe"]
        assert api["readinessProbe"]["periodSeconds"] == 5  # the chart's timing kept

    def test_global_ca_bundle_reaches_every_container_that_connects(self):
        docs = render_chart({"extraVolumes": [CA], "extraVolumeMounts": [CA_MOUNT]})
        for name in ("api", "beat", "worker-scans"):
            spec = pod_spec(docs, "Deployment", f"{FULL}-{name}")
            assert CA in spec["volumes"], name
            for c in [*spec.get("initContainers", []), *spec["containers"]]:
                assert CA_MOUNT in c["volumeMounts"], (name, c["name"])
        job = pod_spec(docs, "Job", f"{FULL}-migrations-1")
        assert CA in job["volumes"] and CA_MOUNT in job["containers"][0]["volumeMounts"]

    def test_janitor(self):
        """The janitor CronJob (and every JanitorPolicy's, from the same template): everything
        but sidecars (a plain extra container keeps a Job from completing) and probes."""
        values = {"janitor": ext()}
        del values["janitor"]["sidecars"], values["janitor"]["probes"]
        cron = one(render_chart(values), "CronJob", f"{FULL}-janitor")
        pod = cron["spec"]["jobTemplate"]["spec"]["template"]
        spec = pod["spec"]
        (main,) = spec["containers"]
        assert {"configMapRef": {"name": "extra"}} in main["envFrom"]
        assert {"name": "E", "value": "1"} in main["env"]
        assert CA in spec["volumes"] and CA_MOUNT in main["volumeMounts"]
        assert [c["name"] for c in spec["initContainers"]] == ["wait-for-migrations", "warm"]
        assert pod["metadata"]["annotations"] == {"team": "jobs"}

    @pytest.mark.parametrize("hooks", [True, False], ids=["hooks", "plain-job"])
    def test_global_volumes_reach_every_pod_of_the_image_and_every_mount_has_its_volume(
        self, hooks
    ):
        """Global extraVolumes/extraVolumeMounts and extraEnv (a CA bundle for rediss:// or
        PostgreSQL TLS) reach every container that connects: the chart's image - the janitor's,
        its operator's, the job template the operator stamps out and the helm test pod's
        included - and Flower; and no container
        of any pod mounts a volume its pod lacks (the API server refuses such a pod, so a
        CronJob's pods would never start)."""
        values = {
            "extraVolumes": [CA],
            "extraVolumeMounts": [CA_MOUNT],
            "extraEnv": [{"name": "SSL_CERT_FILE", "value": "/etc/corp-ca/ca.crt"}],
            "janitor": {"operator": {"enabled": True}},
            "migrations": {"useHelmHooks": hooks},
            "flower": {"enabled": True, "basicAuthSecret": "f"},
        }
        docs = render_chart(values)
        image = pod_spec(docs, "Deployment", f"{FULL}-api")["containers"][0]["image"]
        pods = dict(pod_specs(docs))
        template = one(docs, "ConfigMap", f"{FULL}-janitor-operator")["data"]["job-template.json"]
        pods["operator job template"] = json.loads(template)["spec"]["template"]["spec"]
        ours = 0
        for name, spec in pods.items():
            volumes = {v["name"] for v in spec.get("volumes", [])}
            for c in containers(spec):
                mounts = {m["name"] for m in c.get("volumeMounts", [])}
                assert mounts <= volumes, (name, c["name"], mounts - volumes)
                # the admin-token hook talks to the API server only (its CA: the ServiceAccount's)
                connects = c["image"] == image and not name.endswith("-admin-token")
                if connects or c["name"] == "flower":  # Flower reads the broker too
                    ours += 1
                    assert CA_MOUNT in c["volumeMounts"], (name, c["name"])
                    assert {"name": "SSL_CERT_FILE", "value": "/etc/corp-ca/ca.crt"} in c["env"]
        assert ours >= 13

    def test_ingress_hosts_paths_path_types_and_extra_tls(self):
        values = {
            "api": {
                "ingress": {
                    "enabled": True,
                    "hosts": [
                        "a.example",
                        {"host": "b.example", "paths": [{"path": "/api", "pathType": "Exact"}]},
                    ],
                    "pathType": "ImplementationSpecific",
                    "tls": [{"hosts": ["a.example"], "secretName": "a"}],
                    "extraTLS": [{"hosts": ["b.example"], "secretName": "b"}],
                }
            }
        }
        ing = one(render_chart(values), "Ingress", f"{FULL}-api")
        rules = {
            r["host"]: [(p["path"], p["pathType"]) for p in r["http"]["paths"]]
            for r in ing["spec"]["rules"]
        }
        assert rules == {
            "a.example": [("/", "ImplementationSpecific")],
            "b.example": [("/api", "Exact")],
        }
        assert [t["secretName"] for t in ing["spec"]["tls"]] == ["a", "b"]

    def test_extra_deploy_objects_and_templated_strings(self):
        values = {
            "extraDeploy": [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": "{{ .Release.Name }}-x"},
                },
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: y-{{ .Values.logLevel | lower }}\n",
            ]
        }
        docs = render_chart(values)
        assert one(docs, "ConfigMap", f"{RELEASE}-x")
        assert one(docs, "ConfigMap", "y-info")
