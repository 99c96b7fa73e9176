"""k8s/: the kustomize base is the chart's render (no drift), and the base and both overlays
build with kustomize and validate against the Kubernetes schemas."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from chartlib import HERE, KUBE_VERSIONS, ROOT, run_validator, tool

K8S = ROOT / "k8s"


def test_base_is_rendered_from_the_chart():
    proc = subprocess.run(
        [sys.executable, str(HERE / "render_k8s.py"), "--check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_base_has_no_helm_only_objects():
    for path in (K8S / "base").glob("*.yaml"):
        doc = yaml.safe_load(path.read_text())
        ann = (doc.get("metadata") or {}).get("annotations") or {}
        assert not any(k.startswith("helm.sh/") for k in ann), path.name
        assert "helm.sh/chart" not in ((doc.get("metadata") or {}).get("labels") or {})


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("kustomize")
    files = {}
    for name, path in {
        "base": K8S / "base",
        "dev": K8S / "overlays" / "dev",
        "prod": K8S / "overlays" / "prod",
    }.items():
        proc = subprocess.run(
            [tool("kubectl"), "kustomize", str(path)], capture_output=True, text=True, check=True
        )
        files[name] = out / f"{name}.yaml"
        files[name].write_text(proc.stdout)
    return files


def test_kustomize_output_validates_on_every_version(built):
    results = run_validator(list(built.values()))
    assert {r["version"] for r in results} == set(KUBE_VERSIONS)
    bad = [r for r in results if r["status"] != "ok"]
    assert not bad, bad


def test_overlays_do_what_they_say(built):
    dev = [d for d in yaml.safe_load_all(built["dev"].read_text()) if d]
    prod = [d for d in yaml.safe_load_all(built["prod"].read_text()) if d]
    assert {d["metadata"]["namespace"] for d in dev} == {"celery-stack-dev"}
    assert {d["metadata"]["namespace"] for d in prod} == {"celery-stack"}
    dev_secret = [d for d in dev if d["kind"] == "Secret"]
    assert [s["metadata"]["name"] for s in dev_secret] == ["celery-stack-env"]
    assert not [d for d in prod if d["kind"] == "Secret"]  # provided from outside
    for d in prod:
        if d["kind"] == "Deployment":
            for c in d["spec"]["template"]["spec"]["containers"]:
                assert "@sha256:" in c["image"]
    beat = next(
        d for d in dev if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("beat")
    )
    assert beat["spec"]["strategy"] == {"type": "Recreate"} and beat["spec"]["replicas"] == 1
    job = next(d for d in prod if d["kind"] == "Job")
    assert "helm.sh/hook" not in job["metadata"]["annotations"]  # a plain Job, no hooks
