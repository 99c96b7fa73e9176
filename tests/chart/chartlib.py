"""Helpers of the chart tests: render_chart (helm template, cached), object lookups, the
Kubernetes schema validator. Airflow-chart style: render, parse, assert with jmespath.

Renders are cached per (values, api-versions, kube-version) for the session: the matrix, the
schema validation and the policy checks all reuse the same output.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "celery-stack"
TOOLS_BIN = ROOT / ".tools" / "bin"
TOOLS_PY = ROOT / ".tools" / "chart-venv" / "bin" / "python"
HERE = Path(__file__).parent
RELEASE = "cs"
NAMESPACE = "celery-stack"
# Three supported Kubernetes minors: the chart's floor (kubeVersion >=1.30), a middle one, the
# newest helm 4 targets. kubernetes-validate ships their OpenAPI schemas.
KUBE_VERSIONS = ("1.30.0", "1.32.0", "1.35.0")
KEDA = "keda.sh/v1alpha1"
MONITORING = "monitoring.coreos.com/v1"


def tool(name: str) -> str:
    local = TOOLS_BIN / name
    return str(local) if local.exists() else name


class RenderError(Exception):
    pass


_cache: dict[str, list[dict[str, Any]] | RenderError] = {}


def helm_template(
    values: dict[str, Any] | None = None,
    *,
    api_versions: tuple[str, ...] = (),
    kube_version: str | None = None,
    extra_args: tuple[str, ...] = (),
) -> str:
    args = [tool("helm"), "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for api in api_versions:
        args += ["--api-versions", api]
    if kube_version:
        args += ["--kube-version", kube_version]
    args += list(extra_args)
    proc = subprocess.run(
        [*args, "--values", "-"],
        input=json.dumps(values or {}),
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RenderError(proc.stderr.strip())
    return proc.stdout


def render_chart(
    values: dict[str, Any] | None = None,
    show_only: list[str] | None = None,
    *,
    api_versions: tuple[str, ...] = (),
    kube_version: str | None = None,
) -> list[dict[str, Any]]:
    """Every rendered object (cached per arguments), optionally only those of some templates
    (paths relative to templates/, e.g. "workers/worker-deployment.yaml")."""
    key = json.dumps([values, sorted(api_versions), kube_version], sort_keys=True)
    if key not in _cache:
        try:
            text = helm_template(values, api_versions=api_versions, kube_version=kube_version)
            _cache[key] = _parse(text)
        except RenderError as exc:
            _cache[key] = exc
    cached = _cache[key]
    if isinstance(cached, RenderError):
        raise cached
    if show_only is None:
        return [dict(d) for d in cached]
    wanted = {f"celery-stack/templates/{p}" for p in show_only}
    return [d for d in cached if d["__source__"] in wanted]


# libyaml when PyYAML has it: the matrix parses and writes thousands of objects.
LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
DUMPER: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def notes(values: dict[str, Any], tmp_path: Path) -> str:
    """NOTES.txt as `helm install --dry-run=client` prints it for `values` (no cluster)."""
    vf = tmp_path / "v.json"
    vf.write_text(json.dumps(values))
    proc = subprocess.run(
        [tool("helm"), "install", "cs", str(CHART), "-n", NAMESPACE, "--dry-run=client",
         "--values", str(vf)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return proc.stdout.split("NOTES:", 1)[1]


def load_all(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.load_all(text, Loader=LOADER) if d]


def dump_all(docs: list[dict[str, Any]]) -> str:
    return str(yaml.dump_all(docs, Dumper=DUMPER, sort_keys=False))


def _parse(text: str) -> list[dict[str, Any]]:
    docs = []
    for chunk in text.split("\n---"):
        source = next(
            (ln.split(": ", 1)[1] for ln in chunk.splitlines() if ln.startswith("# Source: ")), ""
        )
        doc = yaml.load(chunk, Loader=LOADER)
        if doc:
            doc["__source__"] = source
            docs.append(doc)
    return docs


def strip(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "__source__"}


def by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every workload that runs containers."""
    for d in docs:
        kind = d["kind"]
        if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield f"{kind}/{d['metadata']['name']}", d["spec"]["template"]["spec"]
        elif kind == "CronJob":
            yield (
                f"{kind}/{d['metadata']['name']}",
                d["spec"]["jobTemplate"]["spec"]["template"]["spec"],
            )
        elif kind == "Pod":
            yield f"Pod/{d['metadata']['name']}", d["spec"]


def run_validator(files: list[Path]) -> list[dict[str, Any]]:
    """kubernetes-validate (in the tools venv) over YAML files, for every KUBE_VERSIONS."""
    proc = subprocess.run(
        [str(TOOLS_PY), str(HERE / "k8s_validate.py"), ",".join(KUBE_VERSIONS), *map(str, files)],
        capture_output=True,
        text=True,
        check=True,
    )
    result: list[dict[str, Any]] = json.loads(proc.stdout)
    return result


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


EXISTING_SECRETS: dict[str, Any] = {
    "redis": {"existingSecret": "prod-redis", "existingSecretKey": "url"},
    "database": {"existingSecret": "prod-db", "existingSecretKey": "url"},
    "auth": {"existingSecret": "prod-api", "existingSecretKey": "tokens"},
}

# An evaluation install: the chart's own bundled Redis and PostgreSQL (templates/evaluation/).
EVALUATION: dict[str, Any] = {
    "evaluation": {
        "redis": {"enabled": True},
        "postgresql": {"enabled": True, "password": "s3cr%t+pw"},
    }
}

# The values combinations every render-level check runs over (issue 5 "Proof"): KEDA on/off,
# hooks on/off, each queue toggled, ingress, flower, existing secrets, beat 1 and 2 replicas,
# monitoring CRDs present or not, an extra queue added by values only.
MATRIX: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    ("defaults", {}, ()),
    ("keda+monitoring", {}, (KEDA, MONITORING)),
    ("keda-disabled-by-value", {"keda": {"enabled": False}}, (KEDA,)),
    ("plain-job-argocd", {"migrations": {"useHelmHooks": False}}, ()),
    ("no-migrations", {"migrations": {"enabled": False}}, ()),
    ("no-counters", {"queues": {"counters": {"enabled": False}}}, (KEDA,)),
    ("no-scans", {"queues": {"scans": {"enabled": False}}}, ()),
    ("no-maintenance", {"queues": {"maintenance": {"enabled": False}}}, (KEDA,)),
    (
        "no-queues",
        {"queues": {q: {"enabled": False} for q in ("counters", "scans", "maintenance")}},
        (),
    ),
    (
        "ingress+flower",
        {
            "api": {
                "ingress": {
                    "enabled": True,
                    "className": "nginx",
                    "tls": [{"hosts": ["api.example.com"], "secretName": "api-tls"}],
                    "hosts": ["api.example.com"],
                },
                "allowedClients": [
                    {"namespaceSelector": {"matchLabels": {"name": "ingress-nginx"}}}
                ],
            },
            "flower": {"enabled": True, "basicAuthSecret": "flower-auth"},
            "networkPolicy": {
                "metricsClients": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}]
            },
            "otel": {"endpoint": "http://otel-collector.monitoring:4318"},
        },
        (),
    ),
    ("existing-secrets", EXISTING_SECRETS, (KEDA, MONITORING)),
    ("beat-1-replica", {"beat": {"replicas": 1}}, ()),
    ("evaluation-stores", EVALUATION, ()),
    (
        "extra-queue+digest",
        {
            "image": {"digest": "sha256:" + "a" * 64},
            "queues": {
                "reports": {
                    "command": "celery-stack-worker-maintenance",
                    "queues": ["reports", "reports-bulk"],
                    "softTimeLimit": 1000,
                    "timeLimit": 1200,
                    "autoscaling": {"inFlightQuery": "sum(celery_worker_tasks_active)"},
                }
            },
            "celery": {"visibilityTimeout": 7200},
            "keda": {"prometheusServerAddress": "http://prometheus.monitoring:9090"},
        },
        (KEDA,),
    ),
    (
        "everything-off",
        {
            "api": {"enabled": False},
            "beat": {"enabled": False},
            "networkPolicy": {"enabled": False},
            "serviceAccount": {"create": False},
            "tests": {"enabled": False},
            "auth": {"generateAdminToken": False, "tokens": []},
            "environment": "local",
        },
        (),
    ),
]
