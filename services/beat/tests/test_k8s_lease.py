"""The Kubernetes Lease election against kmock (the mock Kubernetes API server by kopf's author),
given the real server's compare-and-swap on resourceVersion (409 on a stale one), in-process and
with real beat processes; plus a real-cluster test that runs only where a kubeconfig exists."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import kmock
import pytest
import redis.asyncio as aioredis
import yaml

from celery_stack_beat import clock, election_k8s, fencing
from celery_stack_beat.election import Timing
from celery_stack_beat.election_k8s import KubeLease
from celery_stack_core import keys
from celery_stack_devstack.pytest_plugin import await_until

NS, NAME = "beat-test", "beat"
LEASES = kmock.resource("coordination.k8s.io", "v1", "leases")
LEASE_PATH = f"/apis/coordination.k8s.io/v1/namespaces/{NS}/leases/{NAME}"


class LeaseApi:
    """kmock's KubernetesEmulator keeps the objects and serves GET and POST (409 when the name
    exists), but has no PUT and no resourceVersion. Two reactions add them as the API server
    has them: every create and replace gets a new resourceVersion, and a PUT whose
    resourceVersion is not the stored one is refused with 409 Conflict. `outage()` makes every
    Lease request a 500, as kmock injects errors: a higher-priority reaction that raises."""

    def __init__(self, emu: kmock.KubernetesEmulator, url: str) -> None:
        self.emu = emu
        self.url = url
        self.rv = 100
        self.conflicts = 0
        self._changed = asyncio.Event()
        emu["post", LEASES] << self._created
        emu["put", LEASES] << self._replaced

    def _stamp(self, body: dict[str, Any]) -> dict[str, Any]:
        self.rv += 1
        obj = copy.deepcopy(body)
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self._changed.set()  # wakes every waiter; the next write sets a fresh event
        self._changed = asyncio.Event()
        return obj

    def _created(self, request: kmock.Request) -> dict[str, Any]:
        # The emulator stored the body before this reaction runs (or refused a taken name).
        name = request.data["metadata"]["name"]
        stored = self.emu.objects[request.resource, request.namespace, name]
        stored.history[-1] = obj = self._stamp(stored.last.raw)
        return obj

    def _replaced(self, request: kmock.Request) -> dict[str, Any]:
        key = (request.resource, request.namespace, request.name)
        if key not in self.emu.objects or self.emu.objects[key].deleted:
            raise kmock.KubernetesObjectNotFoundError()
        stored = self.emu.objects[key]
        sent = request.data["metadata"].get("resourceVersion")
        if sent != stored["metadata"]["resourceVersion"]:
            self.conflicts += 1
            raise kmock.KubernetesError(409, "Conflict", f"resourceVersion {sent} is stale")
        obj = self._stamp(request.data)
        stored.history.append(obj)  # a replacement, not kmock's merge-patch
        return obj

    def outage(self) -> None:
        def fail() -> None:
            raise kmock.KubernetesError(500, "InternalError", "injected outage")

        (self.emu**100)[LEASES] << fail

    @property
    def exists(self) -> bool:
        key = (LEASES, NS, NAME)
        return key in self.emu.objects and not self.emu.objects[key].deleted

    def spec(self) -> dict[str, Any]:
        return dict(self.emu.objects[LEASES, NS, NAME]["spec"])

    def writes(self) -> list[dict[str, Any]]:
        """Every stored version's spec, in order: kmock keeps the object's history."""
        history = self.emu.objects[LEASES, NS, NAME].history
        return [dict(v["spec"]) for v in history if v is not None]

    async def written(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait for a Lease write after which `check` holds (woken by the writes themselves)."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    changed = self._changed
                    if check():
                        return
                    await changed.wait()
        except TimeoutError:
            raise AssertionError(f"timed out waiting for {what}") from None

    async def intrude(self, holder: str) -> None:
        """Someone else writes the Lease, through the API like any client."""
        body = copy.deepcopy(self.emu.objects[LEASES, NS, NAME].raw)
        body["spec"]["holderIdentity"] = holder
        async with self.emu.put(LEASE_PATH, json=body) as resp:
            assert resp.status == 200, await resp.text()

    def kubeconfig(self, path: Path) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "kmock", "user": {"token": "x"}}],
            "contexts": [
                {"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": NS}}
            ],
        }
        path.write_text(yaml.safe_dump(config))
        return path


@pytest.fixture
async def kube() -> AsyncIterator[LeaseApi]:
    emu = kmock.KubernetesEmulator()
    emu.resources["coordination.k8s.io/v1/leases"] = kmock.ResourceInfo(
        kind="Lease", namespaced=True, verbs={"get", "create", "update"}
    )
    async with emu, kmock.Server(emu) as srv:
        yield LeaseApi(emu, str(srv.url).rstrip("/"))


T = Timing(lease=1.0, deadline=0.7, retry=0.2)


@pytest.fixture
async def candidates(kube, redis):
    from kubernetes_asyncio import client

    made: list[KubeLease] = []

    def make(identity: str, timing: Timing = T) -> KubeLease:
        api = client.CoordinationV1Api(client.ApiClient(client.Configuration(host=kube.url)))
        lease = KubeLease(
            api,
            name=NAME,
            namespace=NS,
            identity=identity,
            timing=timing,
            epoch_floor=lambda: fencing.current_epoch(redis),
        )
        made.append(lease)
        return lease

    yield make
    for lease in made:
        await lease.close()


async def test_acquire_creates_the_lease_and_renewal_updates_it(
    kube, candidates, redis, monkeypatch
):
    await fencing.raise_epoch(redis, 6)  # a recreated Lease starts above the epoch in Redis
    a, b = candidates("pod-a_uid-a_n1"), candidates("pod-b_uid-b_n2")
    assert await a.try_acquire() == 7
    spec = kube.spec()
    assert spec["holderIdentity"] == "pod-a_uid-a_n1" and spec["leaseTransitions"] == 7
    assert spec["leaseDurationSeconds"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", spec["renewTime"])
    assert await b.try_acquire() is None  # held, and b has only just started watching it
    renewed = spec["renewTime"]
    # The renewal happens a second later by the wall clock: the clock is its input, set here
    # rather than waited for.
    real = election_k8s.micro_time
    monkeypatch.setattr(
        election_k8s,
        "micro_time",
        lambda dt=None: real(dt or datetime.now(UTC) + timedelta(seconds=1)),
    )
    assert await a.renew() is True
    assert kube.spec()["renewTime"] > renewed
    assert kube.spec()["leaseTransitions"] == 7  # renewals do not change the epoch
    assert await b.holder() == "pod-a_uid-a_n1"
    assert len(kube.writes()) == 2 and kube.conflicts == 0  # one create, one replace


async def test_stale_resource_version_conflicts_and_the_loser_knows(kube, candidates, redis):
    a, b = candidates("a"), candidates("b")
    assert await a.try_acquire() == 1
    assert await b.try_acquire() is None
    # Someone else writes the Lease (a takeover we did not see): a's next PUT carries a stale
    # resourceVersion, gets 409, and a learns that it lost.
    await kube.intrude("intruder")
    conflicts = kube.conflicts
    assert await a.renew() is False
    assert kube.conflicts == conflicts + 1
    assert kube.spec()["holderIdentity"] == "intruder"


async def test_a_conflict_on_a_lease_still_ours_renews_on_the_fresh_version(
    kube, candidates, redis
):
    """Someone edits the Lease without taking it (a label, say): the renewal's PUT gets 409,
    KubeLease reads the fresh version, sees it still holds it, and renews on that version."""
    a = candidates("a")
    assert await a.try_acquire() == 1
    await kube.intrude("a")
    conflicts = kube.conflicts
    assert await a.renew() is True
    assert kube.conflicts == conflicts + 1
    assert kube.spec()["holderIdentity"] == "a" and kube.spec()["leaseTransitions"] == 1
    assert await a.renew() is True  # and goes on from the version it wrote
    assert kube.conflicts == conflicts + 1


async def test_two_creates_race_and_one_wins(kube, candidates, redis):
    """Both standbys see no Lease and POST at once: the server takes one, the other's create
    gets 409 and KubeLease reports no leadership."""
    a, b = candidates("a"), candidates("b")
    won = await asyncio.gather(a.try_acquire(), b.try_acquire())
    assert sorted(won, key=lambda e: e is None) == [1, None]
    winner = "a" if won[0] == 1 else "b"
    assert kube.spec()["holderIdentity"] == winner and len(kube.writes()) == 1


async def test_takeover_from_a_stale_snapshot_is_refused(kube, candidates, redis):
    """A standby decides to take over on a snapshot read before someone else wrote the Lease:
    its PUT carries the snapshot's resourceVersion, so KubeLease gets 409 and reports no
    leadership, and the other writer keeps the Lease."""
    a, b = candidates("a"), candidates("b")
    assert await a.try_acquire() == 1
    assert await b.try_acquire() is None  # b starts watching a's record
    snapshot = await b._get()
    assert snapshot is not None
    await kube.intrude("intruder")  # the intruder takes the Lease after b's read
    b._observed_at -= 10  # b has watched a's record unchanged for longer than its duration

    async def stale_get() -> dict[str, Any]:
        return copy.deepcopy(snapshot)

    b._get = stale_get  # type: ignore[method-assign]
    conflicts = kube.conflicts
    assert await b.try_acquire() is None
    assert kube.conflicts == conflicts + 1, "b's takeover PUT reached the server and was refused"
    assert kube.spec()["holderIdentity"] == "intruder"
    assert await b.renew() is False  # b holds nothing


async def test_takeover_only_after_the_lease_expires_by_the_standbys_clock(
    kube, candidates, redis, monkeypatch
):
    # The replicas' monotonic clock is a fake one the test moves: time passing is the subject
    # here, and no stall of the test machine can flip the outcome.
    now = [1000.0]
    monkeypatch.setattr(clock, "now", lambda: now[0])
    slow = Timing(lease=3.0, deadline=2.1, retry=0.6)
    a, b = candidates("a", slow), candidates("b", slow)
    assert await a.try_acquire() == 1
    assert await b.try_acquire() is None
    now[0] += 1.5
    assert await a.renew() is True  # the record changes: b's watch restarts
    now[0] += 1.5
    # 3 s since a acquired, but b saw the record change only now: its watch restarts here.
    assert await b.try_acquire() is None
    now[0] += 1.5
    assert await b.try_acquire() is None  # unchanged for 1.5 s of b's clock: not expired
    now[0] += 2.0
    assert await b.try_acquire() == 2  # unchanged for > leaseDurationSeconds: expired
    assert kube.spec()["holderIdentity"] == "b" and kube.spec()["leaseTransitions"] == 2
    assert await a.renew() is False


async def test_release_hands_over_at_the_next_attempt(kube, candidates, redis):
    a, b = candidates("a"), candidates("b")
    assert await a.try_acquire() == 1
    assert await b.try_acquire() is None
    await a.release()
    spec = kube.spec()
    assert spec["holderIdentity"] == "" and spec["leaseDurationSeconds"] == 1
    assert await b.try_acquire() == 2  # no waiting for expiry


async def test_an_api_server_error_is_raised_not_taken_for_an_answer(kube, candidates, redis):
    """A 500 is neither "no Lease" nor "lost": KubeLease raises, and the election loop's
    renew deadline decides (the process test below shows the leader giving up)."""
    from kubernetes_asyncio.client.exceptions import ApiException

    a = candidates("a")
    assert await a.try_acquire() == 1
    kube.outage()
    with pytest.raises(ApiException) as err:
        await a.renew()
    assert err.value.status == 500
    with pytest.raises(ApiException):
        await candidates("b").try_acquire()
    assert kube.spec()["holderIdentity"] == "a"


# --- real beat processes on kmock -------------------------------------------------------------
SCHEDULE = """
from celery_stack_beat.schedule import Entry


def schedule(settings):
    return [Entry("probe-all", "maintenance.beat_probe_all", 1.0, "all")]
"""


async def sends(client: aioredis.Redis) -> list[tuple[str, int]]:
    out = []
    for raw in reversed(await client.lrange("maintenance", 0, -1)):
        headers = json.loads(raw)["headers"]
        out.append((headers["id"], int(headers["beat_epoch"])))
    return out


@pytest.mark.e2e
async def test_beat_processes_elect_hand_over_and_give_up_on_a_kubernetes_lease(
    kube, start_service, tmp_path, redis
):
    (tmp_path / "k8s_probe_schedule.py").write_text(SCHEDULE)
    env = {
        "BEAT_ELECTION": "kubernetes",
        "KUBECONFIG": str(kube.kubeconfig(tmp_path / "kubeconfig")),
        "BEAT_LEASE_NAME": NAME,
        "BEAT_LEASE_DURATION": "3",
        "BEAT_RENEW_DEADLINE": "2",
        "BEAT_RETRY_PERIOD": "0.5",
        "BEAT_TICK": "0.2",
        "PYTHONPATH": str(tmp_path),
        "POD_UID": "uid-under-test",
    }
    argv = ["celery-stack-beat", "run", "--schedule", "k8s_probe_schedule:schedule"]
    a = start_service("beat-a", argv, POD_NAME="beat-a", **env)
    b = start_service("beat-b", argv, POD_NAME="beat-b", **env)

    def sent(check: Callable[[list[tuple[str, int]]], bool]) -> Callable[[], Awaitable[bool]]:
        async def run() -> bool:
            return check(await sends(redis))

        return run

    try:
        await kube.written(lambda: kube.exists, 30, "the Lease created")
        await await_until(sent(lambda s: len(s) >= 3), 30, what="three sends")
        holder = kube.spec()["holderIdentity"]
        assert holder.startswith(("beat-a_pod:uid-under-test:", "beat-b_pod:uid-under-test:"))
        leader, standby = (a, b) if holder.startswith("beat-a") else (b, a)
        epoch = kube.spec()["leaseTransitions"]
        assert {e for _, e in await sends(redis)} == {epoch}, "messages carry the Lease's epoch"
        assert int(await redis.get(keys.BEAT_EPOCH)) == epoch, "the epoch fences Redis claims"

        # SIGTERM: the leader clears holderIdentity and the standby takes over within seconds.
        t0 = time.monotonic()
        leader.signal(signal.SIGTERM)
        assert await asyncio.to_thread(leader.proc.wait, 15) == 0, leader.output()
        assert any(s["holderIdentity"] == "" for s in kube.writes()), "released on SIGTERM"
        await kube.written(
            lambda: kube.spec()["holderIdentity"].startswith(standby.name), 15, "the takeover"
        )
        assert time.monotonic() - t0 <= 5.0
        assert kube.spec()["leaseTransitions"] == epoch + 1
        await await_until(sent(lambda s: any(e > epoch for _, e in s)), 15, what="handover")
        ids = [i for i, _ in await sends(redis)]
        assert len(ids) == len(set(ids)), "no slot sent twice across the handover"

        # The API server fails: the leader cannot renew, stops at the deadline and exits.
        kube.outage()
        failed_at = time.monotonic()
        assert await asyncio.to_thread(standby.proc.wait, 20) == 3, standby.output()
        assert time.monotonic() - failed_at < 2 + 0.5 + 10  # deadline + retry + slack
        assert "lost leadership" in standby.output()
    finally:
        for svc in (a, b):  # off the event loop: a stopping beat still talks to kmock
            await asyncio.to_thread(svc.stop)


@pytest.mark.e2e
async def test_real_cluster_lease(redis, tmp_path):
    """Against a real API server, only where a kubeconfig exists (skips elsewhere)."""
    cfg = Path(os.environ.get("KUBECONFIG", str(Path.home() / ".kube" / "config")))
    if not cfg.exists():
        pytest.skip("no kubeconfig: the real-cluster Lease test needs a cluster")
    from kubernetes_asyncio import client, config

    await config.load_kube_config(config_file=str(cfg))
    _, active = config.list_kube_config_contexts(config_file=str(cfg))
    ns = (active or {}).get("context", {}).get("namespace") or "default"
    name = f"celery-stack-beat-test-{os.getpid()}"
    timing = Timing(lease=3.0, deadline=2.0, retry=0.5)
    apis = [client.CoordinationV1Api(client.ApiClient()) for _ in range(2)]
    a, b = (
        KubeLease(
            api,
            name=name,
            namespace=ns,
            identity=f"test-{i}",
            timing=timing,
            epoch_floor=lambda: fencing.current_epoch(redis),
        )
        for i, api in enumerate(apis)
    )
    try:
        epoch = await a.try_acquire()
        assert epoch is not None
        assert await b.try_acquire() is None
        assert await a.renew() is True
        await a.release()
        assert await b.try_acquire() == epoch + 1
        await b.release()
    finally:
        await apis[0].delete_namespaced_lease(name, ns)
        await a.close()
        await b.close()
