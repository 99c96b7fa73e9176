"""A real cluster (`make e2e-cluster`): helm install, wait for every pod, `helm test`.

Skipped when no kubeconfig exists or its cluster does not answer - the only skip the project
allows. The image must be reachable by the cluster: CELERY_STACK_IMAGE=repo:tag (default: the
chart's appVersion tag); Redis and PostgreSQL URLs come from CELERY_STACK_REDIS_URL and
CELERY_STACK_DATABASE_URL (defaults match the dev overlay's in-cluster service names).
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from pathlib import Path

import pytest
from chartlib import CHART, tool


def _cluster_reachable() -> bool:
    config = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    if not any(Path(p).exists() for p in config.split(os.pathsep) if p):
        return False
    proc = subprocess.run(
        [tool("kubectl"), "version", "--request-timeout=5s", "-o", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.returncode == 0 and "serverVersion" in proc.stdout


pytestmark = pytest.mark.skipif(not _cluster_reachable(), reason="no kubeconfig / cluster")


def test_install_wait_and_helm_test(tmp_path):
    release = f"cs-e2e-{secrets.token_hex(3)}"
    namespace = release
    image = os.environ.get("CELERY_STACK_IMAGE", "")
    values: dict[str, object] = {
        "redis": {"url": os.environ.get("CELERY_STACK_REDIS_URL", "redis://redis-master:6379/0")},
        "database": {
            "url": os.environ.get(
                "CELERY_STACK_DATABASE_URL",
                "postgresql+asyncpg://celery_stack:celery_stack@postgresql:5432/celery_stack",
            )
        },
    }
    if image:
        repo, _, tag = image.rpartition(":")
        values["image"] = {"repository": repo, "tag": tag}
    vf = tmp_path / "values.json"
    vf.write_text(json.dumps(values))
    helm = tool("helm")
    try:
        install = subprocess.run(
            [helm, "install", release, str(CHART), "-n", namespace, "--create-namespace",
             "--values", str(vf), "--wait", "--timeout", "10m"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert install.returncode == 0, install.stdout + install.stderr
        test = subprocess.run(
            [helm, "test", release, "-n", namespace, "--logs", "--timeout", "5m"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert test.returncode == 0, test.stdout + test.stderr
        assert "round trip ok" in test.stdout
    finally:
        subprocess.run([helm, "uninstall", release, "-n", namespace, "--wait"], check=False)
        subprocess.run(
            [tool("kubectl"), "delete", "namespace", namespace, "--wait=false"], check=False
        )
