"""Render k8s/base from the chart: `python tests/chart/render_k8s.py [--check]`.

The base is `helm template` with k8s/values-base.yaml, one file per object plus a
kustomization.yaml listing them; Helm-only labels are replaced by kustomize's. `--check` renders
into a temporary directory and exits 1 when k8s/base differs (the drift test and CI use it).
"""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "celery-stack"
BASE = ROOT / "k8s" / "base"
VALUES = ROOT / "k8s" / "values-base.yaml"
HELM = ROOT / ".tools" / "bin" / "helm"
HEADER = (
    "# Generated from charts/celery-stack by `make k8s` (tests/chart/render_k8s.py): do not edit.\n"
)


def _helm() -> str:
    return str(HELM) if HELM.exists() else (shutil.which("helm") or "helm")


def render_objects() -> list[dict[str, Any]]:
    out = subprocess.run(
        [
            _helm(),
            "template",
            "celery-stack",
            str(CHART),
            "--namespace",
            "celery-stack",
            "--values",
            str(VALUES),
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    objects = [d for d in yaml.safe_load_all(out) if d]
    for obj in objects:
        for meta in _metadatas(obj):
            labels = meta.get("labels") or {}
            labels.pop("helm.sh/chart", None)
            if "app.kubernetes.io/managed-by" in labels:
                labels["app.kubernetes.io/managed-by"] = "kustomize"
    return objects


def _metadatas(obj: dict[str, Any]) -> list[dict[str, Any]]:
    metas = [obj["metadata"]]
    template = obj.get("spec", {}).get("template") if isinstance(obj.get("spec"), dict) else None
    if isinstance(template, dict) and "metadata" in template:
        metas.append(template["metadata"])
    return metas


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    """Multi-line strings (the scripts ConfigMap) as literal blocks, readable in review."""
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


# This script's own process only: the SafeDumper it writes the base with.
yaml.SafeDumper.add_representer(str, _str)


def write_base(target: Path) -> None:
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    names = []
    for obj in render_objects():
        name = f"{obj['kind'].lower()}-{obj['metadata']['name']}.yaml"
        names.append(name)
        text = yaml.safe_dump(obj, sort_keys=False, width=100)
        (target / name).write_text(HEADER + text)
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "namespace": "celery-stack",
        "resources": sorted(names),
    }
    (target / "kustomization.yaml").write_text(
        HEADER + yaml.safe_dump(kustomization, sort_keys=False)
    )


def differences(a: Path, b: Path) -> list[str]:
    cmp = filecmp.dircmp(a, b)
    return [*cmp.left_only, *cmp.right_only, *cmp.diff_files]


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        with tempfile.TemporaryDirectory() as tmp:
            fresh = Path(tmp) / "base"
            write_base(fresh)
            diff = differences(BASE, fresh) if BASE.exists() else ["k8s/base missing"]
        if diff:
            print(f"k8s/base is stale ({', '.join(sorted(diff))}): run `make k8s`")
            return 1
        print("k8s/base is up to date")
        return 0
    write_base(BASE)
    print(f"wrote {os.path.relpath(BASE, ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
