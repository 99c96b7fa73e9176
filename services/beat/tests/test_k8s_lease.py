"""The Kubernetes Lease election against a mock API server with the real server's
compare-and-swap semantics (resourceVersion; 409 on a stale one), in-process and with real
beat processes; plus a real-cluster test that runs only where a kubeconfig exists."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import re
import signal
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis as sync_redis

from celery_stack_beat import clock, fencing
from celery_stack_beat.election import Timing
from celery_stack_beat.election_k8s import KubeLease
from celery_stack_core import keys

PATH = re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/([^/]+)/leases(?:/([^/?]+))?")


class MockKube:
    """GET/POST/PUT of coordination.k8s.io/v1 Leases, like the API server: every write bumps
    resourceVersion; a PUT whose resourceVersion is not the stored one gets 409 Conflict."""

    def __init__(self) -> None:
        self.leases: dict[tuple[str, str], dict[str, Any]] = {}
        self.rv = 100
        self.writes: list[tuple[str, str, dict[str, Any]]] = []  # (verb, name, spec)
        self.conflicts = 0
        self.fail = False
        self.lock = threading.Lock()
        mock = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, code: int, obj: dict[str, Any]) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _status(self, code: int, reason: str) -> None:
                self._send(
                    code,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "status": "Failure",
                        "reason": reason,
                        "code": code,
                    },
                )

            def _body(self) -> dict[str, Any]:
                return dict(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))

            def _route(self, verb: str) -> None:
                m = PATH.match(self.path)
                if not m:
                    return self._status(404, "NotFound")
                if mock.fail:
                    return self._status(500, "InternalError")
                ns, name = m.group(1), m.group(2)
                with mock.lock:
                    if verb == "GET":
                        obj = mock.leases.get((ns, name or ""))
                        return self._send(200, obj) if obj else self._status(404, "NotFound")
                    body = self._body()
                    if verb == "POST":
                        name = body["metadata"]["name"]
                        if (ns, name) in mock.leases:
                            return self._status(409, "AlreadyExists")
                        return self._send(201, mock.store(ns, name, body, "create"))
                    cur = mock.leases.get((ns, name or ""))
                    if cur is None:
                        return self._status(404, "NotFound")
                    if (
                        body["metadata"].get("resourceVersion")
                        != cur["metadata"]["resourceVersion"]
                    ):
                        mock.conflicts += 1
                        return self._status(409, "Conflict")
                    return self._send(200, mock.store(ns, name or "", body, "update"))

            def do_GET(self) -> None:
                self._route("GET")

            def do_POST(self) -> None:
                self._route("POST")

            def do_PUT(self) -> None:
                self._route("PUT")

            def log_message(self, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def store(self, ns: str, name: str, body: dict[str, Any], verb: str) -> dict[str, Any]:
        self.rv += 1
        obj = copy.deepcopy(body)
        obj.setdefault("apiVersion", "coordination.k8s.io/v1")
        obj.setdefault("kind", "Lease")
        obj["metadata"].update({"name": name, "namespace": ns, "resourceVersion": str(self.rv)})
        self.leases[(ns, name)] = obj
        self.writes.append((verb, name, copy.deepcopy(obj["spec"])))
        return obj

    def spec(self, name: str = "beat", ns: str = "beat-test") -> dict[str, Any]:
        with self.lock:
            return dict(self.leases[(ns, name)]["spec"])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def kubeconfig(self, path: Path) -> Path:
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "mock", "cluster": {"server": self.url}}],
                    "users": [{"name": "u", "user": {"token": "test-token"}}],
                    "contexts": [
                        {
                            "name": "mock",
                            "context": {"cluster": "mock", "user": "u", "namespace": "beat-test"},
                        }
                    ],
                    "current-context": "mock",
                }
            )
        )
        return path


@pytest.fixture
def kube():
    mock = MockKube()
    yield mock
    mock.server.shutdown()
    mock.server.server_close()


T = Timing(lease=1.0, deadline=0.7, retry=0.2)


@pytest.fixture
async def candidates(kube, redis):
    from kubernetes_asyncio import client

    made: list[KubeLease] = []

    def make(identity: str, timing: Timing = T) -> KubeLease:
        api = client.CoordinationV1Api(client.ApiClient(client.Configuration(host=kube.url)))
        lease = KubeLease(
            api,
            name="beat",
            namespace="beat-test",
            identity=identity,
            timing=timing,
            epoch_floor=lambda: fencing.current_epoch(redis),
        )
        made.append(lease)
        return lease

    yield make
    for lease in made:
        await lease.close()


async def test_acquire_creates_the_lease_and_renewal_updates_it(kube, candidates, redis):
    await fencing.raise_epoch(redis, 6)  # a recreated Lease starts above the epoch in Redis
    a, b = candidates("pod-a_uid-a_n1"), candidates("pod-b_uid-b_n2")
    assert await a.try_acquire() == 7
    spec = kube.spec()
    assert spec["holderIdentity"] == "pod-a_uid-a_n1" and spec["leaseTransitions"] == 7
    assert spec["leaseDurationSeconds"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", spec["renewTime"])
    assert await b.try_acquire() is None  # held, and b has only just started watching it
    renewed = spec["renewTime"]
    while datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ") <= renewed:  # the clock moved on
        await asyncio.sleep(0.001)
    assert await a.renew() is True
    assert kube.spec()["renewTime"] > renewed
    assert kube.spec()["leaseTransitions"] == 7  # renewals do not change the epoch
    assert await b.holder() == "pod-a_uid-a_n1"


async def test_stale_resource_version_conflicts_and_the_loser_knows(kube, candidates, redis):
    a, b = candidates("a"), candidates("b")
    assert await a.try_acquire() == 1
    assert await b.try_acquire() is None
    # Someone else writes the Lease (a takeover we did not see): a's next PUT carries a stale
    # resourceVersion, gets 409, and a learns that it lost.
    with kube.lock:
        obj = kube.leases[("beat-test", "beat")]
        obj["spec"]["holderIdentity"] = "intruder"
        kube.store("beat-test", "beat", obj, "update")
    conflicts = kube.conflicts
    assert await a.renew() is False
    assert kube.conflicts == conflicts + 1
    assert kube.spec()["holderIdentity"] == "intruder"


async def test_takeover_from_a_stale_snapshot_is_refused(kube, candidates, redis):
    """A standby decides to take over on a snapshot read before someone else wrote the Lease:
    its PUT carries the snapshot's resourceVersion, so KubeLease gets 409 and reports no
    leadership, and the other writer keeps the Lease."""
    a, b = candidates("a"), candidates("b")
    assert await a.try_acquire() == 1
    assert await b.try_acquire() is None  # b starts watching a's record
    snapshot = await b._get()
    assert snapshot is not None
    with kube.lock:  # the intruder takes the Lease after b's read
        obj = kube.leases[("beat-test", "beat")]
        obj["spec"]["holderIdentity"] = "intruder"
        kube.store("beat-test", "beat", obj, "update")
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


# --- real beat processes on the mock API server -----------------------------------------------
SCHEDULE = """
from celery_stack_beat.schedule import Entry


def schedule(settings):
    return [Entry("probe-all", "maintenance.beat_probe_all", 1.0, "all")]
"""


def sends(client: sync_redis.Redis) -> list[tuple[str, int]]:
    out = []
    for raw in reversed(client.lrange("maintenance", 0, -1)):
        headers = json.loads(raw)["headers"]
        out.append((headers["id"], int(headers["beat_epoch"])))
    return out


def wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.e2e
def test_beat_processes_elect_hand_over_and_give_up_on_a_kubernetes_lease(
    kube, start_service, tmp_path, settings, redis
):
    (tmp_path / "k8s_probe_schedule.py").write_text(SCHEDULE)
    env = {
        "BEAT_ELECTION": "kubernetes",
        "KUBECONFIG": str(kube.kubeconfig(tmp_path / "kubeconfig")),
        "BEAT_LEASE_NAME": "beat",
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
    client = sync_redis.Redis.from_url(settings.stores.redis_url, decode_responses=True)
    try:
        wait(lambda: ("beat-test", "beat") in kube.leases and len(sends(client)) >= 3, 30, "sends")
        holder = kube.spec()["holderIdentity"]
        assert holder.startswith(("beat-a_pod:uid-under-test:", "beat-b_pod:uid-under-test:"))
        leader, standby = (a, b) if holder.startswith("beat-a") else (b, a)
        epoch = kube.spec()["leaseTransitions"]
        assert {e for _, e in sends(client)} == {epoch}, "messages carry the Lease's epoch"
        assert int(client.get(keys.BEAT_EPOCH)) == epoch, "the epoch fences Redis claims"

        # SIGTERM: the leader clears holderIdentity and the standby takes over within seconds.
        t0 = time.monotonic()
        leader.signal(signal.SIGTERM)
        assert leader.proc.wait(15) == 0, leader.output()
        assert any(v == "update" and s["holderIdentity"] == "" for v, _, s in kube.writes)
        wait(lambda: any(e > epoch for _, e in sends(client)), 15, "handover")
        assert time.monotonic() - t0 <= 5.0
        assert kube.spec()["holderIdentity"].startswith(standby.name)
        assert kube.spec()["leaseTransitions"] == epoch + 1
        ids = [i for i, _ in sends(client)]
        assert len(ids) == len(set(ids)), "no slot sent twice across the handover"

        # The API server fails: the leader cannot renew, stops at the deadline and exits.
        kube.fail = True
        failed_at = time.monotonic()
        assert standby.proc.wait(20) == 3, standby.output()
        n = len(sends(client))  # it has exited: whatever it sent is in the list
        assert len(sends(client)) == n
        assert time.monotonic() - failed_at < 2 + 0.5 + 10  # deadline + retry + slack
        assert "lost leadership" in standby.output()
    finally:
        client.close()


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
