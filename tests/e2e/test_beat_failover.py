"""Beat as real processes against real Redis: one leader sends, failovers neither duplicate nor
lose slots, a paused ex-leader sends nothing (DESIGN "Beat"; issue 4's proofs), and every slot
EXECUTES exactly once (issue 13).

A real Celery worker consumes the `maintenance` queue with probe tasks on the platform's task
base class (celery_stack_core.once.OnceTask). Each execution appends its task id (entry +
nominal due time) and the epoch of the leader that sent it (a message header) to a Redis list,
so every execution is counted: a slot that beat sent twice must still have run once.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
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
EXECUTIONS = "test:beat:executions"
PROBE_TASKS = f"""
import json

import redis

from celery_stack_core.celery_app import make_celery
from celery_stack_core.config import get_settings

settings = get_settings()
app = make_celery(settings, "beat_probe_tasks")
client = redis.Redis.from_url(settings.stores.redis_url)


def record(task):
    headers = task.request.headers or {{}}
    epoch = getattr(task.request, "beat_epoch", None) or headers.get("beat_epoch") or 0
    client.rpush({EXECUTIONS!r}, json.dumps({{"id": task.request.id, "epoch": epoch}}))


@app.task(name="maintenance.beat_probe_all", bind=True)
def probe_all(self):
    record(self)


@app.task(name="maintenance.beat_probe_once", bind=True)
def probe_once(self):
    record(self)
"""


@dataclass
class Sent:
    """One execution of a slot (the probe task ran)."""

    entry: str
    due_ms: int
    epoch: int
    seen_at: float  # time.monotonic() when the test first saw it


@dataclass
class Broker:
    """Every execution the probe worker recorded, in execution order."""

    client: sync_redis.Redis
    sent: list[Sent] = field(default_factory=list)

    def poll(self) -> list[Sent]:
        new = self.client.lrange(EXECUTIONS, len(self.sent), -1)
        now = time.monotonic()
        for raw in new:
            rec = json.loads(raw)
            _, entry, due = rec["id"].split(":")
            assert rec["id"] == f"beat:{entry}:{due}"
            self.sent.append(Sent(entry, int(due), int(rec["epoch"]), now))
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

    def queued_epochs(self) -> list[int]:
        """The epoch of every message still on the queue (none is consumed yet)."""
        raw = self.client.lrange("maintenance", 0, -1)
        return [int(json.loads(m)["headers"]["beat_epoch"]) for m in raw]

    def wait_queued(self, check, timeout: float, what: str) -> list[int]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check(epochs := self.queued_epochs()):
                return epochs
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def drained(self, timeout: float = 30.0) -> list[Sent]:
        """Every message on the queue has been executed (or refused): the list is final."""
        deadline = time.monotonic() + timeout
        while self.client.llen("maintenance") or self.client.hlen("unacked"):
            assert time.monotonic() < deadline, "the probe worker did not drain the queue"
            time.sleep(0.05)
        return self.poll()


class Beats:
    def __init__(self, start_service, tmp_path: Path, settings: Settings) -> None:
        self.start_service = start_service
        self.tmp = tmp_path
        (tmp_path / "beat_probe_schedule.py").write_text(SCHEDULE)
        (tmp_path / "beat_probe_tasks.py").write_text(PROBE_TASKS)
        self.redis = sync_redis.Redis.from_url(settings.stores.redis_url, decode_responses=True)
        self.broker = Broker(self.redis)
        self.all: list = []
        self.worker = None

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

    def start_worker(self):
        """The probe worker: one process (solo pool), consuming the maintenance queue."""
        worker = self.start_service(
            "probe-worker",
            ["celery", "-A", "beat_probe_tasks", "worker", "-Q", "maintenance", "-P", "solo"],
            PYTHONPATH=str(self.tmp),
        )
        self.worker = worker
        return worker

    def alive(self) -> list:
        return [s for s in self.all if s.proc.poll() is None]

    def duplicates_refused(self) -> int:
        return self.worker.output().count("refused a duplicate execution of a beat slot")

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
    if b.worker is not None:  # nothing of a probe worker needs a shutdown (its warm one is slow)
        b.worker.signal(signal.SIGKILL)
        b.worker.proc.wait(30)
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


def assert_no_duplicates(sent: list[Sent]) -> None:
    """No slot executed twice, whatever happened to its leader: a slot that a killed leader
    handed to the broker and the next leader resent runs once (celery_stack_core.once)."""
    runs = Counter((s.entry, s.due_ms) for s in sent)
    dupes = {k: n for k, n in runs.items() if n > 1}
    assert not dupes, f"slots executed more than once: {dupes}"


def assert_every_slot_once(sent: list[Sent], entry: str = "probe-all") -> None:
    """Catch-up "all": every 1-second slot between the first and the last executed exactly
    once (executions counted, not de-duplicated)."""
    runs = Counter(s.due_ms for s in sent if s.entry == entry)
    assert runs, "nothing executed"
    wrong = {due: runs[due] for due in range(min(runs), max(runs) + 1, 1000) if runs[due] != 1}
    assert not wrong, f"slots not executed exactly once (due -> executions): {wrong}"


def assert_once_covers_every_slot(sent: list[Sent], bound_s: float) -> None:
    """Catch-up "once": no slot goes unrun. A slot missing from the sequence was coalesced into
    the next send, which came at most `bound_s` (one failover) later."""
    dues = [s.due_ms for s in sent if s.entry == "probe-once"]
    assert len(dues) == len(set(dues)), "a probe-once slot executed twice"
    for a, b in itertools.pairwise(sorted(dues)):
        assert b - a <= bound_s * 1000, f"gap {a}..{b}: slots were missed, not caught up"


@pytest.mark.e2e
@pytest.mark.parametrize("replicas", [2, 3])
def test_exactly_one_replica_sends(beats, replicas: int) -> None:
    beats.start_worker()
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
    beats.start_worker()
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
    assert_no_duplicates(sent)
    assert_every_slot_once(sent)
    assert_once_covers_every_slot(sent, LEASE + RETRY + TICK + 3.0)


@pytest.mark.e2e
def test_paused_ex_leader_sends_nothing_after_resume(beats) -> None:
    """Sends are read from the queue itself here (the probe worker starts at the end), so a
    send after the resume cannot hide among executions of slots sent before the pause."""
    broker = beats.broker
    beats.spawn()
    beats.spawn()
    old, epoch = beats.leader()
    broker.wait_queued(lambda e: len(e) >= 4, 30, "sends")
    old.signal(signal.SIGSTOP)
    try:
        # A takeover takes a whole lease: what the old leader wrote before the stop is in.
        broker.wait_queued(lambda e: any(x > epoch for x in e), 30, "takeover")
        before = broker.queued_epochs().count(epoch)
        broker.wait_queued(lambda e: len([x for x in e if x > epoch]) >= 2, 30, "new sends")
    finally:
        old.signal(signal.SIGCONT)
    # Resumed with a stale lease: the local gate refuses at once, the claim script would refuse
    # too, and the process exits as soon as it sees the lease lost.
    assert old.proc.wait(40) == 3, old.output()
    newer = len([x for x in broker.queued_epochs() if x > epoch])
    broker.wait_queued(lambda e: len([x for x in e if x > epoch]) > newer, 30, "a later send")
    assert broker.queued_epochs().count(epoch) == before, "the ex-leader sent after resume"
    assert "lost leadership" in old.output()
    beats.start_worker()
    broker.wait_for(lambda s: len(s) >= before + newer, 30, "executions")
    sent = broker.drained()
    assert_no_duplicates(sent)
    assert_every_slot_once(sent)


@pytest.mark.e2e
def test_sigterm_hands_over_within_seconds(beats) -> None:
    beats.start_worker()
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
    beats.start_worker()
    for _ in range(3):
        beats.spawn()
    actions = ["kill9", "sigterm", "sigstop", "kill9", "sigterm", "sigstop", "kill9", "sigterm"]
    epochs = []
    for action in actions:
        leader, epoch = beats.leader()
        epochs.append(epoch)
        # Both entries ran under this leader before it goes: otherwise a probe-once gap would
        # span two failovers, not one.
        beats.broker.wait_for(
            lambda s, e=epoch: {x.entry for x in s if x.epoch == e} == {"probe-all", "probe-once"},
            30,
            "leader sends",
        )
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
    sent = beats.broker.drained()
    assert len(set(epochs)) == len(actions), "every failover made a new epoch"
    assert_no_duplicates(sent)
    assert_every_slot_once(sent)
    assert_once_covers_every_slot(sent, LEASE + RETRY + TICK + 3.0)


@pytest.mark.e2e
def test_status_endpoint_cli_and_liveness(beats, free_tcp_port, tmp_path) -> None:
    beats.start_worker()
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


@pytest.mark.e2e
def test_a_slot_sent_twice_executes_once(beats, settings) -> None:
    """What a leader killed between the broker taking a slot and clearing it from pending
    leaves behind, made deterministic: the same slot (same task id, beat's headers) sent twice,
    by two epochs. It runs once; the second delivery is refused and counted."""
    from celery_stack_core.celery_app import make_celery

    beats.start_worker()
    producer = make_celery(settings, "test_producer")
    due = 1_000_000
    for epoch in (7, 8):
        producer.send_task(
            "maintenance.beat_probe_all",
            task_id=f"beat:probe-all:{due}",
            headers={"beat_epoch": epoch, "beat_due_ms": due},
        )
    # A task id without beat's headers (an API or relay send) is never refused.
    producer.send_task("maintenance.beat_probe_once", task_id=f"beat:probe-once:{due}")
    producer.send_task("maintenance.beat_probe_once", task_id=f"beat:probe-once:{due}")
    beats.broker.wait_for(lambda s: len(s) >= 3, 30, "executions")
    sent = beats.broker.drained()
    assert [(s.entry, s.epoch) for s in sent if s.entry == "probe-all"] == [("probe-all", 7)]
    assert len([s for s in sent if s.entry == "probe-once"]) == 2
    assert beats.duplicates_refused() == 1, beats.worker.output()[-3000:]
    producer.close()
