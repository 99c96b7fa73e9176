"""Beat as real processes against real Redis: one leader sends, failovers neither duplicate nor
lose slots, a paused ex-leader sends nothing (DESIGN "Beat"; issue 4's proofs).

Sends are read straight from the broker: beat sends to the `maintenance` queue and nothing
consumes it, so the Redis list holds every message with its task id (entry + nominal due time)
and the epoch of the leader that sent it (a message header).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis as sync_redis

from celery_stack_core import keys
from celery_stack_core.config import Settings

LEASE, DEADLINE, RETRY, TICK = 4.0, 3.0, 0.5, 0.2
FAST = {
    "BEAT_LEASE_DURATION": str(LEASE),
    "BEAT_RENEW_DEADLINE": str(DEADLINE),
    "BEAT_RETRY_PERIOD": str(RETRY),
    "BEAT_TICK": str(TICK),
    "BEAT_ELECTION": "redis",
}
SCHEDULE = """
from celery_stack_beat.schedule import Entry


def schedule(settings):
    return [
        Entry("probe-all", "maintenance.beat_probe_all", 1.0, "all"),
        Entry("probe-once", "maintenance.beat_probe_once", 1.0, "once"),
    ]
"""


@dataclass
class Sent:
    entry: str
    due_ms: int
    epoch: int
    seen_at: float  # time.monotonic() when the test first saw it in the broker


@dataclass
class Broker:
    """Every message beat put on the `maintenance` list, in send order."""

    client: sync_redis.Redis
    sent: list[Sent] = field(default_factory=list)

    def poll(self) -> list[Sent]:
        # LPUSH adds at the head; what we have seen is the tail: read all but the last `seen`.
        new = self.client.lrange("maintenance", 0, -(len(self.sent) + 1))
        now = time.monotonic()
        for raw in reversed(new):  # LPUSH: the newest is at the head
            headers = json.loads(raw)["headers"]
            _, entry, due = headers["id"].split(":")
            assert headers["id"] == f"beat:{entry}:{due}"
            self.sent.append(Sent(entry, int(due), int(headers["beat_epoch"]), now))
        return self.sent

    def of(self, entry: str) -> list[Sent]:
        return [s for s in self.poll() if s.entry == entry]

    def wait_for(self, check, timeout: float, what: str) -> list[Sent]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check(self.poll()):
                return self.sent
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Beats:
    def __init__(self, start_service, tmp_path: Path, settings: Settings) -> None:
        self.start_service = start_service
        self.tmp = tmp_path
        (tmp_path / "beat_probe_schedule.py").write_text(SCHEDULE)
        self.redis = sync_redis.Redis.from_url(settings.stores.redis_url, decode_responses=True)
        self.broker = Broker(self.redis)
        self.all: list = []

    def spawn(self, **env: str):
        n = len(self.all)
        svc = self.start_service(
            f"beat{n}",
            ["celery-stack-beat", "run", "--schedule", "beat_probe_schedule:schedule"],
            PYTHONPATH=str(self.tmp),
            BEAT_HEARTBEAT_FILE=str(self.tmp / f"beat{n}.alive"),
            **{**FAST, **env},
        )
        self.all.append(svc)
        return svc

    def alive(self) -> list:
        return [s for s in self.all if s.proc.poll() is None]

    def leader(self, timeout: float = 30.0):
        """The running process whose identity is in the leader record."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            raw = self.redis.get(keys.BEAT_LEADER)
            if raw:
                rec = json.loads(raw)
                for svc in self.alive():
                    if f":{svc.proc.pid}:" in rec["holder"]:
                        return svc, int(rec["epoch"])
            time.sleep(0.05)
        raise AssertionError("no leader\n" + self.logs())

    def logs(self) -> str:
        return "\n".join(f"--- {s.name}\n{s.output()[-4000:]}" for s in self.all)

    def sends_with_epoch_after(self, epoch: int, after: float) -> list[Sent]:
        return [s for s in self.broker.poll() if s.epoch > epoch and s.seen_at >= after]


@pytest.fixture
def beats(start_service, tmp_path, settings, redis):
    b = Beats(start_service, tmp_path, settings)
    yield b
    b.redis.close()
    for svc in b.alive():  # SIGTERM must stop every replica promptly (release, exit 0)
        svc.signal(signal.SIGTERM)
    for svc in b.all:
        try:
            svc.proc.wait(40)
        except subprocess.TimeoutExpired:
            svc.signal(signal.SIGUSR1)  # faulthandler: dump its threads into its log
            time.sleep(1)
            pytest.fail(f"{svc.name} did not stop on SIGTERM:\n{svc.output()[-6000:]}")


def assert_no_duplicates(sent: list[Sent], *, resend_after_crash: bool = False) -> None:
    """No slot sent twice. With `resend_after_crash` (the leader was killed or paused), one
    exception: a slot the old leader handed to the broker just before it died, before it could
    clear it from pending, is resent once by a later epoch with the same task id (README,
    known gaps); the old leader's kill lands right after a send here, so that window is hit."""
    by_slot: dict[tuple[str, int], list[int]] = {}
    for s in sent:
        by_slot.setdefault((s.entry, s.due_ms), []).append(s.epoch)
    dupes = {k: e for k, e in by_slot.items() if len(e) > 1}
    if resend_after_crash:
        dupes = {k: e for k, e in dupes.items() if len(e) > 2 or not e[0] < e[1]}
    assert not dupes, f"slots sent twice: {dupes}"


def assert_every_slot_once(sent: list[Sent], entry: str = "probe-all") -> None:
    """Catch-up "all": every 1-second slot between the first and the last, exactly once."""
    dues = sorted({s.due_ms for s in sent if s.entry == entry})  # see assert_no_duplicates
    assert dues, "nothing sent"
    missing = sorted(set(range(dues[0], dues[-1] + 1, 1000)) - set(dues))
    assert not missing, f"slots never sent: {missing}"


def assert_once_covers_every_slot(sent: list[Sent], bound_s: float) -> None:
    """Catch-up "once": no slot goes unrun. A slot missing from the sequence was coalesced into
    the next send, which came at most `bound_s` (one failover) later."""
    dues = sorted({s.due_ms for s in sent if s.entry == "probe-once"})  # see assert_no_duplicates
    for a, b in itertools.pairwise(dues):
        assert b - a <= bound_s * 1000, f"gap {a}..{b}: slots were missed, not caught up"


@pytest.mark.e2e
@pytest.mark.parametrize("replicas", [2, 3])
def test_exactly_one_replica_sends(beats, replicas: int) -> None:
    for _ in range(replicas):
        beats.spawn()
    leader, epoch = beats.leader()
    beats.broker.wait_for(lambda s: len([x for x in s if x.entry == "probe-all"]) >= 6, 30, "sends")
    sent = beats.broker.poll()
    assert {s.epoch for s in sent} == {epoch}, "only the leader's epoch sends"
    assert_no_duplicates(sent)
    assert_every_slot_once(sent)
    leaders = [s for s in beats.all if "became leader" in s.output()]
    assert leaders == [leader], beats.logs()
    for svc in beats.all:
        if svc is not leader:
            assert "standby: leader is" in svc.output()


@pytest.mark.e2e
def test_kill9_standby_sends_the_next_due_slot_within_lease_plus_tick(beats) -> None:
    beats.spawn()
    beats.spawn()
    leader, epoch = beats.leader()
    beats.broker.wait_for(lambda s: len(s) >= 4, 30, "sends")
    killed_at = time.monotonic()
    leader.signal(signal.SIGKILL)
    after = beats.broker.wait_for(
        lambda s: any(x.epoch > epoch for x in s), 30, "a send by the new leader"
    )
    first = min(x.seen_at for x in after if x.epoch > epoch)
    # The lease runs from the last renewal (at most RETRY before the kill); a standby tries
    # every RETRY, then sends at its first tick. Generous slack for 2 loaded cores.
    assert first - killed_at <= LEASE + RETRY + TICK + 2.0, first - killed_at
    beats.broker.wait_for(lambda s: len([x for x in s if x.epoch > epoch]) >= 4, 30, "more")
    sent = beats.broker.poll()
    assert_no_duplicates(sent, resend_after_crash=True)
    assert_every_slot_once(sent)
    assert_once_covers_every_slot(sent, LEASE + RETRY + TICK + 3.0)


@pytest.mark.e2e
def test_paused_ex_leader_sends_nothing_after_resume(beats) -> None:
    beats.spawn()
    beats.spawn()
    old, epoch = beats.leader()
    beats.broker.wait_for(lambda s: len(s) >= 4, 30, "sends")
    old.signal(signal.SIGSTOP)
    time.sleep(0.3)  # anything it wrote before the stop has reached Redis
    before = len([s for s in beats.broker.poll() if s.epoch == epoch])
    try:
        beats.broker.wait_for(lambda s: any(x.epoch > epoch for x in s), 30, "takeover")
        time.sleep(1.0)
    finally:
        old.signal(signal.SIGCONT)
    # Resumed with a stale lease: the local gate refuses at once, the claim script would refuse
    # too, and the process exits as soon as it sees the lease lost.
    assert old.proc.wait(40) == 3, old.output()
    time.sleep(1.0)
    sent = beats.broker.poll()
    assert len([s for s in sent if s.epoch == epoch]) == before, "the ex-leader sent after resume"
    assert_no_duplicates(sent, resend_after_crash=True)
    assert_every_slot_once(sent)
    assert "lost leadership" in old.output()


@pytest.mark.e2e
def test_sigterm_hands_over_within_seconds(beats) -> None:
    beats.spawn()
    beats.spawn()
    old, epoch = beats.leader()
    beats.broker.wait_for(lambda s: len(s) >= 4, 30, "sends")
    t0 = time.monotonic()
    old.signal(signal.SIGTERM)
    assert old.proc.wait(40) == 0
    assert "released leadership on shutdown" in old.output()
    lease = beats.redis.get(keys.BEAT_LEASE)  # deleted on release (or already the successor's)
    assert lease is None or f":{old.proc.pid}:" not in lease
    after = beats.broker.wait_for(lambda s: any(x.epoch > epoch for x in s), 15, "handover")
    first = min(x.seen_at for x in after if x.epoch > epoch)
    assert first - t0 <= 5.0, first - t0
    beats.broker.wait_for(lambda s: len([x for x in s if x.epoch > epoch]) >= 3, 15, "more")
    sent = beats.broker.poll()
    assert_no_duplicates(sent)
    assert_every_slot_once(sent)


@pytest.mark.e2e
@pytest.mark.chaos
def test_many_failovers_no_duplicate_and_no_missed_slot(beats) -> None:
    """Kill -9, SIGTERM and SIGSTOP/SIGCONT the leader in turn, keeping three replicas."""
    for _ in range(3):
        beats.spawn()
    actions = ["kill9", "sigterm", "sigstop", "kill9", "sigterm", "sigstop", "kill9", "sigterm"]
    epochs = []
    for action in actions:
        leader, epoch = beats.leader()
        epochs.append(epoch)
        beats.broker.wait_for(lambda s, e=epoch: any(x.epoch == e for x in s), 30, "leader sends")
        if action == "kill9":
            leader.signal(signal.SIGKILL)
        elif action == "sigterm":
            leader.signal(signal.SIGTERM)
        else:
            leader.signal(signal.SIGSTOP)
        beats.broker.wait_for(lambda s, e=epoch: any(x.epoch > e for x in s), 30, "takeover")
        if action == "sigstop":
            leader.signal(signal.SIGCONT)
            assert leader.proc.wait(40) == 3, leader.output()
        leader.proc.wait(40)
        beats.spawn()  # back to three replicas
    beats.broker.wait_for(lambda s: len(s) >= 4, 30, "final sends")
    time.sleep(1.5)
    sent = beats.broker.poll()
    assert len(set(epochs)) == len(actions), "every failover made a new epoch"
    assert_no_duplicates(sent, resend_after_crash=True)
    assert_every_slot_once(sent)
    assert_once_covers_every_slot(sent, LEASE + RETRY + TICK + 3.0)


@pytest.mark.e2e
def test_status_endpoint_cli_and_liveness(beats, free_tcp_port, tmp_path) -> None:
    import httpx

    from celery_stack_devstack.servers import free_port

    ports = [free_tcp_port, free_port()]
    a = beats.spawn(METRICS_PORT=str(ports[0]))
    beats.spawn(METRICS_PORT=str(ports[1]))
    leader, epoch = beats.leader()

    def get(port: int, path: str) -> httpx.Response:
        deadline = time.monotonic() + 30
        while True:
            try:
                return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    views = {p: get(p, "/status").json() for p in ports}
    for _ in range(100):  # the standby reports the leader after its next attempt
        if all(v["leader"] for v in views.values()):
            break
        time.sleep(0.1)
        views = {p: get(p, "/status").json() for p in ports}
    roles = sorted(v["role"] for v in views.values())
    assert roles == ["leader", "standby"]
    holders = {v["leader"]["holder"] for v in views.values()}
    assert len(holders) == 1 and f":{leader.proc.pid}:" in holders.pop()
    lead_port = ports[0] if leader is a else ports[1]
    assert views[lead_port]["may_send"] is True and views[lead_port]["epoch"] == epoch
    assert get(lead_port, "/healthz").status_code == 200
    assert all(get(p, "/readyz").status_code == 200 for p in ports)  # leader and standby
    assert get(lead_port, "/nope").status_code == 404
    text = get(lead_port, "/metrics").text
    assert 'celery_stack_beat_is_leader{election="redis"} 1.0' in text
    assert "celery_stack_beat_slots_total" in text
    assert "celery_stack_http_requests" not in text  # only beat's own families

    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    exe = str(Path(sys.executable).parent / "celery-stack-beat")
    out = subprocess.run(
        [exe, "status", "--json", "--schedule", "beat_probe_schedule:schedule"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(out.stdout)
    assert data["epoch"] == epoch and data["leader"]["epoch"] == epoch
    assert [r["entry"] for r in data["entries"]] == ["probe-all", "probe-once"]
    assert all(r["next_due_ms"] > r["last_ms"] for r in data["entries"])

    hb = tmp_path / f"beat{beats.all.index(leader)}.alive"
    ok = subprocess.run([exe, "alive"], env={**env, "BEAT_HEARTBEAT_FILE": str(hb)}, check=False)
    assert ok.returncode == 0
    stale = tmp_path / "stale.alive"
    stale.touch()
    os.utime(stale, (time.time() - 600, time.time() - 600))
    bad = subprocess.run(
        [exe, "alive"],
        env={**env, "BEAT_HEARTBEAT_FILE": str(stale)},
        capture_output=True,
        check=False,
    )
    assert bad.returncode == 1
