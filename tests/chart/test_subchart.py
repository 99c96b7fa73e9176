"""The chart as a dependency of an umbrella chart (issue 12 item 2): Helm hands every subchart
the parent's `global` block, so the root schema must accept it, and the subchart must render
and lint with empty values, with globals, and with its own values under its alias."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from chartlib import CHART, load_all, tool


@pytest.fixture(scope="module")
def umbrella(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("umbrella")
    (root / "Chart.yaml").write_text(
        "apiVersion: v2\nname: platform\nversion: 1.0.0\nicon: https://example.com/i.png\n"
        "dependencies:\n"
        "  - name: celery-stack\n    version: 0.1.0\n    alias: jobs\n"
        "    repository: file://../celery-stack\n"
    )
    (root / "values.yaml").write_text("global:\n  imageRegistry: registry.example.com\n")
    (root / "templates").mkdir()
    (root / "templates" / "shared.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: shared\n"
        "data:\n  registry: {{ .Values.global.imageRegistry | quote }}\n"
    )
    shutil.copytree(CHART, root / "charts" / "celery-stack")
    return root


def helm(*args: str, values: dict[str, Any] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("helm"), *args, "--values", "-"],
        input=json.dumps(values or {}),
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"global": {"storageClass": "fast", "labels": {"team": "a"}}},
        {"jobs": {"queues": {"scans": {"enabled": False}}}},
    ],
    ids=["empty", "globals", "alias-values"],
)
def test_umbrella_renders_and_lints(umbrella, values):
    proc = helm("template", "platform", str(umbrella), "--namespace", "apps", values=values)
    assert proc.returncode == 0, proc.stderr
    docs = load_all(proc.stdout)
    names = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    assert "platform-jobs-api" in names and "platform-jobs-worker-counters" in names
    scans = "platform-jobs-worker-scans" in names
    assert scans is ("jobs" not in values)
    lint = helm("lint", "--strict", str(umbrella), values=values)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_unknown_keys_are_still_refused_inside_the_subchart(umbrella):
    proc = helm("template", "platform", str(umbrella), values={"jobs": {"replicaz": 2}})
    assert proc.returncode != 0
    assert "replicaz" in proc.stderr
