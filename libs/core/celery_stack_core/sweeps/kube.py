"""Which pods exist now: the Kubernetes half of owners.judge.

In a pod with a service account allowed to list pods in JANITOR_NAMESPACE (its own namespace by
default), the snapshot is the set of UIDs of pods that are Pending or Running (a terminating pod
still runs its processes, so it counts as present). Outside Kubernetes, or when the API does not
answer, the snapshot is None: pod-owned locks and scans are then never released by a sweep
(the operator's pod DELETED handler still releases them).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from celery_stack_core.config import Settings
from celery_stack_core.sweeps.base import PodSnapshot, no_pods

log = logging.getLogger(__name__)
SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
PRESENT_PHASES = ("Pending", "Running")


def in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and (SA_DIR / "token").exists()


def namespace(settings: Settings) -> str:
    if settings.janitor.namespace:
        return settings.janitor.namespace
    return (SA_DIR / "namespace").read_text().strip()


def pod_snapshot(settings: Settings) -> PodSnapshot:
    if not in_cluster():
        return no_pods
    ns = namespace(settings)

    async def snapshot() -> frozenset[str] | None:
        from kubernetes_asyncio import client, config

        try:
            config.load_incluster_config()
            async with client.ApiClient() as api:
                pods = await client.CoreV1Api(api).list_namespaced_pod(ns)
        except Exception as exc:  # any API failure means "cannot tell": release nothing
            log.warning("pod snapshot failed; pod owners are kept", extra={"error": repr(exc)})
            return None
        return frozenset(p.metadata.uid for p in pods.items if p.status.phase in PRESENT_PHASES)

    return snapshot
