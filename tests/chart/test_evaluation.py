"""Issue 12 item 8: the bundled Redis and PostgreSQL of an evaluation install, rendered by the
chart's own templates (templates/evaluation/), no dependency chart. Each toggle renders its
StatefulSet and Service, the stack's URLs point at them, a contradicting URL or existingSecret
fails the render, the objects validate against the Kubernetes schemas, and the NetworkPolicies
let the stack (and only the stack) reach them."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import redis
from chartlib import (
    CHART,
    EVALUATION,
    RELEASE,
    RenderError,
    by_kind,
    dump_all,
    one,
    render_chart,
    run_validator,
    strip,
    tool,
)

from celery_stack_devstack.servers import free_port, redis_binary

FULL = f"{RELEASE}-celery-stack"
PASSWORD = EVALUATION["evaluation"]["postgresql"]["password"]
REDIS_ON = {"evaluation": {"redis": {"enabled": True}}}
PG_ON = {"evaluation": {"postgresql": {"enabled": True, "password": PASSWORD}}}
STORES = ("redis", "postgresql")


def render_error(values: dict[str, Any]) -> str:
    with pytest.raises(RenderError) as info:
        render_chart(values)
    return str(info.value)


def env_secret(docs: list[dict[str, Any]]) -> dict[str, str]:
    raw = one(docs, "Secret", f"{FULL}-env")["data"]
    return {k: base64.b64decode(v).decode() for k, v in raw.items()}


def pod_spec(docs: list[dict[str, Any]], store: str) -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "StatefulSet", f"{FULL}-{store}")["spec"]["template"]["spec"]
    return spec


def service_port(docs: list[dict[str, Any]], store: str) -> int:
    svc = one(docs, "Service", f"{FULL}-{store}")
    sts = one(docs, "StatefulSet", f"{FULL}-{store}")
    assert svc["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
    assert sts["spec"]["serviceName"] == svc["metadata"]["name"]
    (port,) = svc["spec"]["ports"]
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    assert port["targetPort"] in {p["name"] for p in container["ports"]}
    return int(port["port"])


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes LabelSelector semantics (matchLabels, In, NotIn)."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for expr in selector.get("matchExpressions", []):
        present = labels.get(expr["key"]) in expr["values"]
        if present != (expr["operator"] == "In"):
            return False
    return True


def pod_labels(docs: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    out = {}
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job"):
            out[d["metadata"]["name"]] = d["spec"]["template"]["metadata"]["labels"]
    return out


def admits(
    docs: list[dict[str, Any]], direction: str, me: dict[str, str], other: dict[str, str], port: int
) -> bool:
    """Whether the release's NetworkPolicies open `direction` traffic on port between a pod
    labelled me and a pod labelled other (same namespace). A pod no policy of that direction
    selects is unrestricted; one that some policy selects (the default deny) needs a rule naming
    the port and a peer that matches (a rule without peers admits any)."""
    key, peers = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    mine = [
        d["spec"]
        for d in by_kind(docs, "NetworkPolicy")
        if direction in d["spec"]["policyTypes"] and matches(d["spec"]["podSelector"], me)
    ]
    if not mine:
        return True
    for p in mine:
        for rule in p.get(key, []):
            if port not in [x["port"] for x in rule.get("ports", [])]:
                continue
            if peers not in rule or any(
                "podSelector" in peer
                and "namespaceSelector" not in peer
                and matches(peer["podSelector"], other)
                for peer in rule[peers]
            ):
                return True
    return False


def allowed(
    docs: list[dict[str, Any]], src: dict[str, str], dst: dict[str, str], port: int
) -> bool:
    """src may open port on dst: src's egress and dst's ingress both admit it."""
    return admits(docs, "Egress", src, dst, port) and admits(docs, "Ingress", dst, src, port)


class TestToggles:
    def test_off_by_default(self):
        docs = render_chart()
        assert not by_kind(docs, "StatefulSet")
        assert not [
            d for d in docs if d["__source__"].startswith("celery-stack/templates/evaluation/")
        ]

    @pytest.mark.parametrize(("store", "values"), [("redis", REDIS_ON), ("postgresql", PG_ON)])
    def test_each_toggle_renders_only_its_statefulset_and_service(self, store, values):
        docs = render_chart(values)
        assert [d["metadata"]["name"] for d in by_kind(docs, "StatefulSet")] == [f"{FULL}-{store}"]
        assert service_port(docs, store) == {"redis": 6379, "postgresql": 5432}[store]
        other = next(s for s in STORES if s != store)
        assert not [d for d in docs if d["metadata"]["name"] == f"{FULL}-{other}"]

    def test_redis_runs_with_aof_everysec_noeviction_and_a_claim(self):
        values = {
            "evaluation": {
                "redis": {
                    "enabled": True,
                    "image": "redis:7.2",
                    "storage": {"size": "3Gi", "storageClass": "fast"},
                }
            }
        }
        docs = render_chart(values)
        sts = one(docs, "StatefulSet", f"{FULL}-redis")
        (c,) = sts["spec"]["template"]["spec"]["containers"]
        assert c["image"] == "redis:7.2"
        args = c["args"]
        pairs = dict(zip(args[::2], args[1::2], strict=True))
        assert pairs["--appendonly"] == "yes"
        assert pairs["--appendfsync"] == "everysec"
        assert pairs["--maxmemory-policy"] == "noeviction"
        assert {"name": "data", "mountPath": pairs["--dir"]} in c["volumeMounts"]
        (claim,) = sts["spec"]["volumeClaimTemplates"]
        assert claim["metadata"]["name"] == "data"
        assert claim["spec"]["storageClassName"] == "fast"
        assert claim["spec"]["resources"]["requests"]["storage"] == "3Gi"
        for probe in ("readinessProbe", "livenessProbe"):
            assert "redis-cli -p 6379 ping" in " ".join(c[probe]["exec"]["command"])

    def test_postgresql_password_secret_claim_and_probes(self):
        docs = render_chart(PG_ON)
        sts = one(docs, "StatefulSet", f"{FULL}-postgresql")
        (c,) = sts["spec"]["template"]["spec"]["containers"]
        assert c["image"].startswith("docker.io/library/postgres:")
        env = {e["name"]: e for e in c["env"]}
        ref = env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
        secret = one(docs, "Secret", ref["name"])["data"][ref["key"]]
        assert base64.b64decode(secret).decode() == PASSWORD
        data_mount = next(m for m in c["volumeMounts"] if m["name"] == "data")
        assert env["PGDATA"]["value"].startswith(data_mount["mountPath"] + "/")
        (claim,) = sts["spec"]["volumeClaimTemplates"]
        assert "storageClassName" not in claim["spec"]  # empty: the cluster's default
        for probe in ("readinessProbe", "livenessProbe"):
            assert c[probe]["exec"]["command"][0] == "pg_isready"

    def test_postgresql_needs_a_password(self):
        err = render_error({"evaluation": {"postgresql": {"enabled": True}}})
        assert "evaluation.postgresql.password" in err

    def test_renders_are_stable(self):
        both = {**REDIS_ON["evaluation"], **PG_ON["evaluation"]}
        first = subprocess.run(
            [tool("helm"), "template", RELEASE, str(CHART), "--values", "-"],
            input=json.dumps({"evaluation": both}),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        second = subprocess.run(
            [tool("helm"), "template", RELEASE, str(CHART), "--values", "-"],
            input=json.dumps({"evaluation": both}),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert first == second


class TestInstallOrder:
    def test_no_pre_install_hook_waits_for_the_bundled_postgresql(self):
        """Helm runs pre-install hooks before it creates the release's objects: a migrations
        hook would wait for a PostgreSQL that only comes after it, until its deadline, and the
        single `helm install` would fail. With the bundled PostgreSQL the migrations Job is
        the plain one (the other pods' wait-for-migrations init containers wait for it)."""
        docs = render_chart(EVALUATION)
        hooks = [d for d in docs if "helm.sh/hook" in d["metadata"].get("annotations", {})]
        for hook in hooks:
            if "pre-install" not in hook["metadata"]["annotations"]["helm.sh/hook"]:
                continue
            assert hook["kind"] != "StatefulSet"
            if hook["kind"] == "Job":
                for c in hook["spec"]["template"]["spec"]["containers"]:
                    names = {e["name"] for e in c.get("env", [])}
                    assert "DATABASE_URL" not in names, hook["metadata"]["name"]
        (job,) = [d for d in by_kind(docs, "Job") if "-migrations-" in d["metadata"]["name"]]
        assert "helm.sh/hook" not in job["metadata"].get("annotations", {})
        assert not [d for d in hooks if "migrations" in d["metadata"]["name"]]

    def test_an_external_postgresql_keeps_the_hook(self):
        docs = render_chart(REDIS_ON)
        job = one(docs, "Job", f"{FULL}-migrations-1")
        assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"


class TestRedisRuns:
    def test_the_rendered_command_runs_and_its_probes_answer(self, tmp_path: Path):
        """The bundled Redis's command and args as rendered, run by a real redis-server (the
        machine's; the pod runs the official image's), on a port of this test; its rendered
        probes answer, and the loss-bound settings are live."""
        ctr = pod_spec(render_chart(REDIS_ON), "redis")["containers"][0]
        port = str(free_port())
        assert ctr["command"] == ["redis-server"]
        args = [port if a == "6379" else str(tmp_path) if a == "/data" else a for a in ctr["args"]]
        server = subprocess.Popen([redis_binary(), *args], stdout=subprocess.DEVNULL)
        try:
            client = redis.Redis(port=int(port))
            deadline = time.monotonic() + 30
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    assert time.monotonic() < deadline and server.poll() is None
                    time.sleep(0.2)
            assert client.config_get("appendonly") == {"appendonly": "yes"}
            assert client.config_get("appendfsync") == {"appendfsync": "everysec"}
            policy = client.config_get("maxmemory-policy")
            assert policy == {"maxmemory-policy": "noeviction"}
            client.close()
            if shutil.which("redis-cli"):
                for probe in ("readinessProbe", "livenessProbe"):
                    cmd = [c.replace("6379", port) for c in ctr[probe]["exec"]["command"]]
                    env = {**os.environ, "PATH": os.environ.get("PATH", "")}
                    assert subprocess.run(cmd, env=env, timeout=10).returncode == 0, probe
        finally:
            server.terminate()
            server.wait(30)


class TestSecurity:
    @pytest.mark.parametrize("store", STORES)
    def test_non_root_read_only_root_filesystem(self, store):
        spec = pod_spec(render_chart(EVALUATION), store)
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec["automountServiceAccountToken"] is False
        (c,) = spec["containers"]
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert c["resources"]["limits"]["memory"]
        volumes = {v["name"] for v in spec["volumes"]} | {"data"}
        assert {m["name"] for m in c["volumeMounts"]} <= volumes


class TestUrls:
    def test_redis_url_points_at_the_bundled_service(self):
        docs = render_chart(REDIS_ON)
        url = urlsplit(env_secret(docs)["REDIS_URL"])
        assert (url.hostname, url.port) == (f"{FULL}-redis", service_port(docs, "redis"))
        assert env_secret(docs)["REDIS_ADDRESS"] == f"{FULL}-redis:6379"
        # the database is untouched
        assert env_secret(docs)["DATABASE_URL"] == env_secret(render_chart())["DATABASE_URL"]

    def test_database_url_points_at_the_bundled_service_with_its_password(self):
        docs = render_chart(PG_ON)
        url = urlsplit(env_secret(docs)["DATABASE_URL"])
        assert url.scheme == "postgresql+asyncpg"
        assert (url.hostname, url.port) == (f"{FULL}-postgresql", service_port(docs, "postgresql"))
        assert (url.username, unquote(url.password or "")) == ("celery_stack", PASSWORD)
        assert url.path == "/celery_stack"
        env = {
            e["name"]: e.get("value") for e in pod_spec(docs, "postgresql")["containers"][0]["env"]
        }
        assert (env["POSTGRES_USER"], env["POSTGRES_DB"]) == ("celery_stack", "celery_stack")

    def test_ports_follow_the_store_port_values(self):
        values = {**EVALUATION, "redis": {"port": 6380}, "database": {"port": 5433}}
        docs = render_chart(values)
        assert urlsplit(env_secret(docs)["REDIS_URL"]).port == service_port(docs, "redis") == 6380
        db = urlsplit(env_secret(docs)["DATABASE_URL"])
        assert db.port == service_port(docs, "postgresql") == 5433

    @pytest.mark.parametrize(
        ("values", "names"),
        [
            ({**REDIS_ON, "redis": {"url": "redis://elsewhere:6379/0"}}, "redis.url"),
            (
                {**PG_ON, "database": {"url": "postgresql+asyncpg://u:p@elsewhere/db"}},
                "database.url",
            ),
            ({**REDIS_ON, "redis": {"existingSecret": "prod-redis"}}, "redis.existingSecret"),
            ({**PG_ON, "database": {"existingSecret": "prod-db"}}, "database.existingSecret"),
        ],
        ids=["redis-url", "database-url", "redis-secret", "database-secret"],
    )
    def test_a_contradicting_url_or_secret_fails_with_a_message(self, values, names):
        err = render_error(values)
        store = "redis" if names.startswith("redis") else "postgresql"
        assert f"evaluation.{store}.enabled" in err and names in err

    def test_a_url_naming_the_bundled_service_is_no_contradiction(self):
        url = f"redis://{FULL}-redis:6379/0"
        docs = render_chart({**REDIS_ON, "redis": {"url": url}})
        assert env_secret(docs)["REDIS_URL"] == url


class TestNetworkPolicy:
    @pytest.mark.parametrize(
        "extra",
        [{}, {"networkPolicy": {"storeCIDRs": ["10.20.0.0/16"]}}],
        ids=["no-cidrs", "store-cidrs"],
    )
    def test_the_stack_reaches_the_stores_and_only_it(self, extra):
        docs = render_chart({**EVALUATION, **extra})
        pods = pod_labels(docs)
        stores = {s: pods.pop(f"{FULL}-{s}") for s in STORES}
        assert len(pods) >= 5  # api, workers, beat, migrations...
        stranger = {"app.kubernetes.io/name": "something-else", "app.kubernetes.io/instance": "x"}
        for store, port in (("redis", 6379), ("postgresql", 5432)):
            for name, labels in pods.items():
                assert allowed(docs, labels, stores[store], port), (name, store)
            # ingress to a store admits the release's pods only
            ingress = one(docs, "NetworkPolicy", f"{FULL}-{store}")["spec"]["ingress"]
            peers = [p for rule in ingress for p in rule["from"]]
            assert not any(matches(p["podSelector"], stranger) for p in peers)
            assert not any("namespaceSelector" in p or "ipBlock" in p for p in peers)
            other = stores["postgresql" if store == "redis" else "redis"]
            assert not any(matches(p["podSelector"], other) for p in peers)

    def test_the_stores_are_under_the_default_deny_and_closed_to_others(self):
        docs = render_chart({**EVALUATION, "networkPolicy": {"storeCIDRs": ["10.20.0.0/16"]}})
        labels = pod_labels(docs)
        api, redis, pg = (labels[f"{FULL}-{c}"] for c in ("api", "redis", "postgresql"))
        stranger = {"app.kubernetes.io/name": "other-chart", "app.kubernetes.io/instance": "x"}
        for store, port in ((redis, 6379), (pg, 5432)):
            assert allowed(docs, api, store, port)
            assert not admits(docs, "Ingress", store, stranger, port)
            assert not admits(docs, "Ingress", store, api, port + 1)
            # the stores need no egress: they stay under the default deny
            assert not admits(docs, "Egress", store, api, 8000)
        assert not allowed(docs, redis, pg, 5432)
        assert not allowed(docs, api, redis, 5432)

    def test_without_the_bundled_peer_the_path_would_be_closed(self):
        # the bundled store's podSelector is what opens the stack's egress when storeCIDRs narrow it
        cidrs = {"networkPolicy": {"storeCIDRs": ["10.20.0.0/16"]}}
        redis = pod_labels(render_chart({**EVALUATION, **cidrs}))[f"{FULL}-redis"]
        off = render_chart(cidrs)
        api = pod_labels(off)[f"{FULL}-api"]
        assert not admits(off, "Egress", api, redis, 6379)


class TestValidity:
    def test_objects_validate_on_every_kubernetes_version(self, tmp_path: Path):
        docs = [strip(d) for d in render_chart(EVALUATION)]
        ours = [
            d for d in docs if d["kind"] in ("StatefulSet", "Service", "Secret", "NetworkPolicy")
        ]
        assert {d["kind"] for d in ours} == {"StatefulSet", "Service", "Secret", "NetworkPolicy"}
        path = tmp_path / "evaluation.yaml"
        path.write_text(dump_all(docs))
        results = run_validator([path])
        invalid = [r for r in results if r["status"] == "invalid"]
        assert not invalid, invalid
        checked = {(r["kind"], r["name"]) for r in results if r["status"] == "ok"}
        assert {(d["kind"], d["metadata"]["name"]) for d in ours} <= checked

    def test_helm_lint_strict_with_both_on(self, tmp_path: Path):
        values = tmp_path / "values.json"
        values.write_text(json.dumps(EVALUATION))
        proc = subprocess.run(
            [tool("helm"), "lint", "--strict", str(CHART), "--values", str(values)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "0 chart(s) failed" in proc.stdout
