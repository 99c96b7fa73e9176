"""The operator as real kopf (KopfRunner) against kmock's Kubernetes emulator, with real Redis
and PostgreSQL: policy created -> CronJob (owned by it), changed -> patched, status written,
deleted -> CronJob gone; a pod DELETED event releases that pod's lock and requeues its running
scan within a second."""

import asyncio
import json
import time
import uuid

import aiohttp
import kmock
import pytest
import yaml
from kopf.testing import KopfRunner
from sqlalchemy import insert, select

from celery_stack_core import keys
from celery_stack_core.config import get_settings
from celery_stack_core.models import Scan
from celery_stack_core.sweeps import reports

NS = "default"
POLICIES = f"/apis/celery-stack.io/v1alpha1/namespaces/{NS}/janitorpolicies"
CRONJOBS = f"/apis/batch/v1/namespaces/{NS}/cronjobs"
PODS = f"/api/v1/namespaces/{NS}/pods"


@pytest.fixture
async def kube(tmp_path, monkeypatch, settings):
    emu = kmock.KubernetesEmulator()
    verbs = {"get", "list", "watch", "create", "patch", "update", "delete"}
    for key, kind, sub in [
        ("celery-stack.io/v1alpha1/janitorpolicies", "JanitorPolicy", {"status"}),
        ("batch/v1/cronjobs", "CronJob", set()),
        ("v1/pods", "Pod", set()),
        ("v1/events", "Event", set()),
    ]:
        emu.resources[key] = kmock.ResourceInfo(
            kind=kind, namespaced=True, subresources=sub, verbs=verbs
        )
    for key, kind in [
        ("v1/namespaces", "Namespace"),
        ("apiextensions.k8s.io/v1/customresourcedefinitions", "CustomResourceDefinition"),
    ]:
        emu.resources[key] = kmock.ResourceInfo(kind=kind, namespaced=False, verbs=verbs)
    async with emu, kmock.Server(emu) as srv:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": str(srv.url).rstrip("/")}}],
            "users": [{"name": "kmock", "user": {"token": "x"}}],
            "contexts": [
                {"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": NS}}
            ],
        }
        path = tmp_path / "kubeconfig"
        path.write_text(yaml.safe_dump(config))
        monkeypatch.setenv("KUBECONFIG", str(path))
        monkeypatch.setenv("JANITOR_OPERATOR_STATUS_INTERVAL", "0.5")
        monkeypatch.setenv("JANITOR_NAMESPACE", NS)
        get_settings.cache_clear()
        async with aiohttp.ClientSession(base_url=str(srv.url)) as http:
            yield emu, http
        get_settings.cache_clear()


async def until(check, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def get(http, path):
    async with http.get(path) as r:
        return await r.json() if r.status == 200 else None


async def test_policies_become_cronjobs_and_pod_deletion_releases_at_once(kube, clean_db, redis):
    _emu, http = kube
    runner = KopfRunner(
        ["run", "--standalone", "--verbose", "-n", NS, "-m", "celery_stack_janitor.operator"]
    )
    with runner:
        policy = {
            "apiVersion": "celery-stack.io/v1alpha1",
            "kind": "JanitorPolicy",
            "metadata": {
                "name": "p1",
                "namespace": NS,
                "uid": str(uuid.uuid4()),
                "generation": 1,
                "resourceVersion": "1",
            },
            "spec": {
                "schedule": "*/5 * * * *",
                "sweeps": ["locks"],
                "dryRun": True,
                "thresholds": {"lockGraceSeconds": 60},
            },
        }
        async with http.post(POLICIES, json=policy) as r:
            assert r.status in (200, 201), await r.text()
        cj = await until(lambda: get(http, f"{CRONJOBS}/janitor-p1"), what="CronJob created")
        assert (
            cj["spec"]["schedule"] == "*/5 * * * *" and cj["spec"]["concurrencyPolicy"] == "Forbid"
        )
        owner = cj["metadata"]["ownerReferences"][0]
        assert (owner["kind"], owner["name"], owner["uid"]) == (
            "JanitorPolicy",
            "p1",
            policy["metadata"]["uid"],
        )
        container = cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        assert container["command"] == [
            "celery-stack-janitor",
            "sweep",
            "--json",
            "--only",
            "locks",
            "--dry-run",
        ]
        assert {"name": "JANITOR_LOCK_GRACE", "value": "60"} in container["env"]

        # changed -> patched
        patch = {"metadata": {"generation": 2}, "spec": {"schedule": "0 * * * *", "suspend": True}}
        async with http.patch(
            f"{POLICIES}/p1", json=patch, headers={"Content-Type": "application/merge-patch+json"}
        ) as r:
            assert r.status == 200, await r.text()

        async def patched():
            cur = await get(http, f"{CRONJOBS}/janitor-p1")
            return cur if cur["spec"]["schedule"] == "0 * * * *" else None

        cj = await until(patched, what="CronJob patched")
        assert cj["spec"]["suspend"] is True

        # status: observedGeneration and the last run's counts (the sweep's report in Redis)
        await reports.save(
            redis, "p1", {"dry_run": True, "finished_at": 1.0, "found": 3, "done": 3, "skipped": 1}
        )

        async def status():
            st = (await get(http, f"{POLICIES}/p1")).get("status") or {}
            return st if st.get("observedGeneration") == 2 and st.get("lastRun") else None

        st = await until(status, what="status written")
        assert st["cronJob"] == "janitor-p1" and st["lastRun"]["found"] == 3

        # a pod of ours is deleted: its lock and its running scan are released within 1 s
        uid = str(uuid.uuid4())
        owner_id = f"pod:{uid}:12"
        record = json.dumps({"owner": owner_id, "nonce": "n", "at": 0, "ttl": 600})
        await redis.set(keys.lock("flush:post:views:1"), record, px=600_000)
        await redis.sadd(keys.owner_locks(owner_id), keys.lock("flush:post:views:1"))
        await redis.set(
            keys.owner_heartbeat(owner_id), record, px=1_200_000
        )  # fresh: no sweep would
        sid = uuid.uuid4()
        async with clean_db.begin() as conn:
            await conn.execute(
                insert(Scan.__table__).values(
                    id=sid,
                    owner="u",
                    domain="example.com",
                    status="running",
                    worker=owner_id,
                    deliveries=1,
                )
            )
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": "worker-1",
                "namespace": NS,
                "uid": uid,
                "resourceVersion": "1",
                "labels": {"app.kubernetes.io/name": "celery-stack"},
            },
        }
        async with http.post(PODS, json=pod) as r:
            assert r.status in (200, 201)
        await asyncio.sleep(0.5)  # the operator sees it ADDED (and does nothing)
        assert await redis.exists(keys.lock("flush:post:views:1"))
        async with http.delete(f"{PODS}/worker-1") as r:
            assert r.status == 200
        deleted_at = time.monotonic()

        async def released():
            if await redis.exists(keys.lock("flush:post:views:1")):
                return False
            async with clean_db.connect() as conn:
                row = (
                    await conn.execute(select(Scan.__table__).where(Scan.__table__.c.id == sid))
                ).one()
            return row.status == "queued" and row.attempt == 2

        await until(released, timeout=5, what="pod's lock and scan released")
        assert time.monotonic() - deleted_at < 1.0

        # deleted -> the CronJob is gone (deleted with its owner)
        async with http.delete(f"{POLICIES}/p1") as r:
            assert r.status == 200

        async def gone():
            return await get(http, f"{CRONJOBS}/janitor-p1") is None

        await until(gone, what="CronJob deleted")
    assert runner.exit_code == 0, runner.output[-3000:]
    assert runner.exception is None
