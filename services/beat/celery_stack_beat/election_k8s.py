"""Leader election on a Kubernetes `coordination.k8s.io/v1` Lease, with our own loop timing.

client-go semantics, minus its two flaws the Python client's leaderelection module copies
(wall-clock expiry, no release on shutdown):

- holderIdentity = pod name + owner id + per-process nonce (core identity.lease_holder);
- every write is a compare-and-swap on metadata.resourceVersion (409 Conflict = someone else
  wrote first); only the server's view decides, never our wall clock;
- a standby judges expiry by how long *it* has watched the record stay unchanged, on its
  monotonic clock (observed time), so clock skew between nodes cannot cause a takeover;
- leaseTransitions is incremented on every acquisition and is the fencing epoch; it never goes
  below the epoch already in Redis (a recreated Lease starts above it);
- release on SIGTERM clears holderIdentity (leaseDurationSeconds=1), so a standby takes over
  at its next attempt.
"""

from __future__ import annotations

import asyncio
import copy
import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from celery_stack_beat import clock
from celery_stack_beat.election import Timing
from celery_stack_core.config import Settings

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
API = "coordination.k8s.io/v1"


def in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST")) and (SA_DIR / "token").exists()


def micro_time(dt: datetime | None = None) -> str:
    """MicroTime as the API server parses it (RFC 3339, always six fractional digits)."""
    return (dt or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class KubeLease:
    kind = "kubernetes"

    def __init__(  # noqa: PLR0913 - keyword-only: the Lease's coordinates, owner and timing
        self,
        api: Any,  # kubernetes_asyncio.client.CoordinationV1Api
        *,
        name: str,
        namespace: str,
        identity: str,
        timing: Timing,
        epoch_floor: Callable[[], Awaitable[int]],
    ) -> None:
        self.api = api
        self.name = name
        self.namespace = namespace
        self.identity = identity
        self.timing = timing
        self.epoch_floor = epoch_floor
        self._observed_rv: str | None = None
        self._observed_at = 0.0
        self._observed_holder: str | None = None
        self._held: dict[str, Any] | None = None  # the Lease as we last wrote it

    # --- API calls (dicts in, dicts out) ----------------------------------------------------
    def _to_dict(self, obj: Any) -> dict[str, Any]:
        return dict(self.api.api_client.sanitize_for_serialization(obj))

    async def _get(self) -> dict[str, Any] | None:
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            obj = await self.api.read_namespaced_lease(self.name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return self._to_dict(obj)

    async def _replace(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """PUT with the body's resourceVersion; None on 409 (someone else wrote first)."""
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            obj = await self.api.replace_namespaced_lease(self.name, self.namespace, body)
        except ApiException as exc:
            if exc.status in (404, 409):
                return None
            raise
        return self._to_dict(obj)

    def _spec(self, epoch: int, *, acquired: str, holder: str, duration: float) -> dict[str, Any]:
        return {
            "holderIdentity": holder,
            "leaseDurationSeconds": max(1, round(duration)),
            "acquireTime": acquired,
            "renewTime": micro_time(),
            "leaseTransitions": epoch,
        }

    # --- Backend ----------------------------------------------------------------------------
    async def try_acquire(self) -> int | None:
        from kubernetes_asyncio.client.exceptions import ApiException

        lease = await self._get()
        now = clock.now()
        if lease is None:
            epoch = await self.epoch_floor() + 1
            body = {
                "apiVersion": API,
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(
                    epoch, acquired=micro_time(), holder=self.identity, duration=self.timing.lease
                ),
            }
            try:
                created = await self.api.create_namespaced_lease(self.namespace, body)
            except ApiException as exc:
                if exc.status == 409:  # another replica created it first
                    return None
                raise
            self._held = self._to_dict(created)
            self._observed_holder = self.identity
            return epoch
        spec = lease.get("spec") or {}
        rv = lease["metadata"].get("resourceVersion")
        if rv != self._observed_rv:
            # The record changed (a renewal, a takeover, a release): restart our watch of it.
            self._observed_rv, self._observed_at = rv, now
        holder = spec.get("holderIdentity") or ""
        self._observed_holder = holder or None
        duration = float(spec.get("leaseDurationSeconds") or self.timing.lease)
        if holder and holder != self.identity and now - self._observed_at < duration:
            return None  # held, and not yet expired by our own clock
        epoch = max(int(spec.get("leaseTransitions") or 0), await self.epoch_floor()) + 1
        body = copy.deepcopy(lease)
        body["spec"] = self._spec(
            epoch, acquired=micro_time(), holder=self.identity, duration=self.timing.lease
        )
        replaced = await self._replace(body)
        if replaced is None:
            return None
        self._held = replaced
        self._observed_holder = self.identity
        return epoch

    async def renew(self) -> bool:
        if self._held is None:
            return False
        body = copy.deepcopy(self._held)
        body["spec"]["renewTime"] = micro_time()
        body["spec"]["acquireTime"] = micro_time(_parse(body["spec"].get("acquireTime")))
        replaced = await self._replace(body)
        if replaced is None:
            # Conflict: someone wrote the Lease since our last write. Still ours (an edit of
            # labels, say)? Then retry on the fresh version; else we lost it.
            fresh = await self._get()
            if fresh is None or (fresh.get("spec") or {}).get("holderIdentity") != self.identity:
                self._held = None
                return False
            body = copy.deepcopy(fresh)
            body["spec"]["renewTime"] = micro_time()
            body["spec"]["acquireTime"] = micro_time(_parse(body["spec"].get("acquireTime")))
            replaced = await self._replace(body)
            if replaced is None:
                return False
        self._held = replaced
        return True

    async def release(self) -> None:
        if self._held is None:
            return
        body = copy.deepcopy(self._held)
        spec = body["spec"]
        body["spec"] = self._spec(
            int(spec.get("leaseTransitions") or 0), acquired=micro_time(), holder="", duration=1
        )
        await self._replace(body)  # a conflict means someone else holds it now: nothing to do
        self._held = None

    async def holder(self) -> str | None:
        return self._observed_holder

    async def wait(self, seconds: float) -> None:
        await asyncio.sleep(seconds)  # a release is seen at the next attempt (retry period)

    async def close(self) -> None:
        await self.api.api_client.close()


def _parse(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if isinstance(value, str) and value:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return None


async def connect(
    settings: Settings, identity: str, timing: Timing, epoch_floor: Callable[[], Awaitable[int]]
) -> KubeLease:
    """In-cluster config when present, else the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    from kubernetes_asyncio import client, config

    namespace = settings.beat.lease_namespace
    if in_cluster():
        config.load_incluster_config()
        if not namespace:
            namespace = (SA_DIR / "namespace").read_text().strip()
    else:
        await config.load_kube_config()
        if not namespace:
            _, active = config.list_kube_config_contexts()
            namespace = (active or {}).get("context", {}).get("namespace") or "default"
    api = client.CoordinationV1Api(client.ApiClient())
    return KubeLease(
        api,
        name=settings.beat.lease_name,
        namespace=namespace,
        identity=identity,
        timing=timing,
        epoch_floor=epoch_floor,
    )
