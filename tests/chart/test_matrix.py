"""Every values combination of the matrix renders, passes `helm lint --strict`, and every
rendered object validates against the Kubernetes schemas of three minor versions."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from chartlib import (
    CHART,
    KUBE_VERSIONS,
    MATRIX,
    RenderError,
    helm_template,
    render_chart,
    run_validator,
    tool,
)

IDS = [m[0] for m in MATRIX]


@pytest.mark.parametrize(("ident", "values", "apis"), MATRIX, ids=IDS)
def test_helm_lint_strict(ident, values, apis, tmp_path):
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(values))
    # helm lint has no --api-versions: the KEDA/monitoring variants are rendered below.
    args = [tool("helm"), "lint", "--strict", str(CHART), "--values", str(values_file)]
    proc = subprocess.run(args, capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize(("ident", "values", "apis"), MATRIX, ids=IDS)
def test_renders_with_expected_objects(ident, values, apis):
    docs = render_chart(values, api_versions=apis)
    kinds = {d["kind"] for d in docs}
    assert "ConfigMap" in kinds
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), "duplicate objects"


@pytest.fixture(scope="module")
def validation(matrix_dir: Path) -> list[dict[str, Any]]:
    return run_validator(sorted(matrix_dir.glob("*.yaml")))


def test_every_object_validates_on_every_kubernetes_version(validation):
    invalid = [r for r in validation if r["status"] == "invalid"]
    assert not invalid, invalid
    versions = {r["version"] for r in validation}
    assert versions == set(KUBE_VERSIONS)
    files = {Path(r["file"]).stem for r in validation}
    assert files == set(IDS)
    assert sum(r["status"] == "ok" for r in validation) > 300


CRD_SHAPES: dict[str, dict[str, Any]] = {
    # The fields KEDA and the Prometheus Operator require (from their CRDs).
    "ScaledObject": {"spec": ["scaleTargetRef", "triggers"]},
    "TriggerAuthentication": {"spec": ["secretTargetRef"]},
    "ServiceMonitor": {"spec": ["selector", "endpoints"]},
    "PodMonitor": {"spec": ["selector", "podMetricsEndpoints"]},
}


def test_custom_resources_have_their_required_fields(validation, matrix_docs):
    crds = {(Path(r["file"]).stem, r["index"]) for r in validation if r["status"] == "crd"}
    seen = set()
    for ident, index in crds:
        doc = matrix_docs[ident][index]
        kind = doc["kind"]
        assert kind in CRD_SHAPES, kind
        seen.add(kind)
        for field in CRD_SHAPES[kind]["spec"]:
            assert doc["spec"].get(field), (kind, field)
        if kind == "ScaledObject":
            for trig in doc["spec"]["triggers"]:
                assert trig["type"] in ("redis", "prometheus")
                assert all(isinstance(v, str) for v in trig["metadata"].values())
    assert seen == set(CRD_SHAPES)


def test_validator_rejects_an_invalid_object(tmp_path):
    """The schema check is not a no-op: an unknown field and a wrong type are caught."""
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "replicas": "two",
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "metadata": {"labels": {"a": "b"}},
                "spec": {"containers": [], "bogus": 1},
            },
        },
    }
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    results = run_validator([path])
    assert {r["status"] for r in results} == {"invalid"}


def test_kubernetes_below_the_floor_is_refused():
    with pytest.raises(RenderError, match="kubeVersion"):
        helm_template(kube_version="1.29.0")
    assert helm_template(kube_version="1.30.0")
