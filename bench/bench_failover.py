"""Beat failover: our leader-elected, fenced beat against stock Celery beat run twice.

Ours: two `celery-stack-beat run` replicas with the DEFAULT lease (15 s lease, 10 s renew
deadline, 2 s retry, 0.5 s tick), a 1-second job with catch-up "all" and one with "once".
Each trial kills the leader (kill -9, or SIGTERM) and times the signal -> the first message
the new leader put in the broker; a fresh replica replaces the old one. Afterwards every
message in the broker is checked: no slot twice ("all": every second from first to last,
exactly once; "once": no duplicate).

Naive (field report 003, stock Celery beat): there is no election, so a second replica (or a
rolling update's overlap) means two schedulers each sending every job: we run two real
`celery beat` processes on the same schedule and count the sends per slot. With one replica
there is no standby at all: a kill -9 leaves the schedule dead until something restarts it.
RedBeat's lock (the usual fix) defaults to a 1500 s timeout, so its kill -9 failover is up to
1500 s by configuration (stated, not measured here), and it has no fencing.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import redis as sync_redis

from bench.common import BenchEnv, Proc, median, table, verdict, wait_for

KILL9_TRIALS = int(os.environ.get("BENCH_FAILOVER_KILL9_TRIALS", "5"))
SIGTERM_TRIALS = int(os.environ.get("BENCH_FAILOVER_SIGTERM_TRIALS", "5"))
NAIVE_WINDOW_S = 20.0
TARGET_KILL9_S = 20.0
TARGET_SIGTERM_S = 5.0

SCHEDULE = """
from celery_stack_beat.schedule import Entry


def schedule(settings):
    return [
        Entry("probe-all", "maintenance.bench_probe_all", 1.0, "all"),
        Entry("probe-once", "maintenance.bench_probe_once", 1.0, "once"),
    ]
"""
NAIVE_APP = """
import os
from celery import Celery

app = Celery("naive", broker=os.environ["REDIS_URL"])
app.conf.beat_schedule = {
    "probe": {"task": "naive.probe", "schedule": 1.0, "options": {"queue": "naive"}},
}
"""


class Broker:
    """Messages on a Redis list (LPUSH at the head), read incrementally from the tail."""

    def __init__(self, client: sync_redis.Redis, queue: str) -> None:
        self.client, self.queue = client, queue
        self.sent: list[tuple[str, int, float]] = []  # (task id, epoch, seen at)

    def poll(self) -> list[tuple[str, int, float]]:
        new = self.client.lrange(self.queue, 0, -(len(self.sent) + 1))
        now = time.monotonic()
        for raw in reversed(new):
            headers = json.loads(raw)["headers"]
            self.sent.append((headers["id"], int(headers.get("beat_epoch") or 0), now))
        return self.sent


def _leader(client: sync_redis.Redis, procs: list[Proc]) -> tuple[Proc, int]:
    from celery_stack_core import keys

    found: list[tuple[Proc, int]] = []

    def check() -> bool:
        raw = client.get(keys.BEAT_LEADER)
        if not raw:
            return False
        rec = json.loads(raw)
        for p in procs:
            if p.alive() and f"_pid{p.pid}_" in rec["holder"]:
                found.append((p, int(rec["epoch"])))
                return True
        return False

    wait_for(check, 60, "a beat leader")
    return found[-1]


def _ours(env: BenchEnv) -> dict[str, float]:
    (env.work_dir / "bench_beat_schedule.py").write_text(SCHEDULE)
    client = sync_redis.Redis.from_url(env.redis_url, decode_responses=True)
    broker = Broker(client, "maintenance")
    n = 0

    def spawn() -> Proc:
        nonlocal n
        n += 1
        child = env.child_env(
            BEAT_ELECTION="redis",
            BEAT_HEARTBEAT_FILE=str(env.work_dir / f"b{n}"),
            LOG_LEVEL="INFO",  # the standby's "leader is" log line tells us it is campaigning
        )
        child["PYTHONPATH"] = str(env.work_dir)
        return env.start(
            f"beat{n}",
            [env.bin("celery-stack-beat"), "run", "--schedule", "bench_beat_schedule:schedule"],
            child,
        )

    procs = [spawn(), spawn()]
    times: dict[str, list[float]] = {"kill9": [], "sigterm": []}
    plan = ["kill9"] * KILL9_TRIALS + ["sigterm"] * SIGTERM_TRIALS
    for i, how in enumerate(plan):
        leader, epoch = _leader(client, procs)
        wait_for(lambda e=epoch: any(x[1] == e for x in broker.poll()), 60, "the leader sends")
        standby = next(p for p in procs if p is not leader and p.alive())
        wait_for(lambda s=standby: "standby: leader is" in s.output(), 60, "a standby")
        t0 = time.monotonic()
        os.kill(leader.pid, signal.SIGKILL if how == "kill9" else signal.SIGTERM)
        wait_for(lambda e=epoch: any(x[1] > e for x in broker.poll()), 120, "failover")
        first = min(x[2] for x in broker.sent if x[1] > epoch)
        times[how].append(first - t0)
        leader.popen.wait(30)
        print(f"  trial {i + 1}/{len(plan)} {how}: {first - t0:.2f} s", flush=True)
        procs = [p for p in procs if p.alive()] + [spawn()]
    time.sleep(2.0)
    sent = broker.poll()
    ids = [x[0] for x in sent]
    duplicates = len(ids) - len(set(ids))
    dues = sorted(int(i.split(":")[2]) for i in set(ids) if i.startswith("beat:probe-all:"))
    missed = len(set(range(dues[0], dues[-1] + 1, 1000)) - set(dues)) if dues else -1
    for p in procs:
        p.stop()
    client.close()
    return {
        "kill9_median_s": median(times["kill9"]),
        "kill9_max_s": max(times["kill9"], default=float("nan")),
        "sigterm_median_s": median(times["sigterm"]),
        "sigterm_max_s": max(times["sigterm"], default=float("nan")),
        "duplicates": float(duplicates),
        "missed": float(missed),
        "sends": float(len(ids)),
    }


def _naive(env: BenchEnv) -> dict[str, float]:
    (env.work_dir / "naive_beat_app.py").write_text(NAIVE_APP)
    client = sync_redis.Redis.from_url(env.redis_url, decode_responses=True)
    child = env.child_env()
    child["PYTHONPATH"] = str(env.work_dir)
    procs = [
        env.start(
            f"celery-beat{k}",
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "naive_beat_app",
                "beat",
                "--loglevel",
                "WARNING",
                "-s",
                str(env.work_dir / f"celerybeat-{k}"),
            ],
            child,
        )
        for k in (1, 2)
    ]
    wait_for(lambda: client.llen("naive") >= 2, 60, "stock celery beat sends")
    client.delete("naive")
    time.sleep(NAIVE_WINDOW_S)
    sends = int(client.llen("naive"))
    for p in procs:
        p.stop()
    client.close()
    slots = NAIVE_WINDOW_S  # one slot per second
    return {"sends_per_slot": sends / slots, "duplicates": max(0.0, sends - slots)}


def run(env: BenchEnv) -> dict[str, float]:
    settings = env.settings()
    lease = settings.beat.lease_duration
    print(
        f"ours: lease {lease:g} s / renew deadline {settings.beat.renew_deadline:g} s / "
        f"retry {settings.beat.retry_period:g} s / tick {settings.beat.tick:g} s; "
        f"{KILL9_TRIALS} kill -9 and {SIGTERM_TRIALS} SIGTERM trials",
        flush=True,
    )
    ours = _ours(env)
    print(f"naive: two stock `celery beat` processes for {NAIVE_WINDOW_S:g} s", flush=True)
    naive = _naive(env)
    print(
        table(
            "beat failover and duplicates",
            ["", "ours (elected, fenced)", "stock celery beat x2", "RedBeat defaults"],
            [
                ["kill -9 failover median (s)", ours["kill9_median_s"], "no standby", "<= 1500"],
                ["kill -9 failover max (s)", ours["kill9_max_s"], "no standby", "<= 1500"],
                ["SIGTERM handover median (s)", ours["sigterm_median_s"], "no standby", "-"],
                ["SIGTERM handover max (s)", ours["sigterm_max_s"], "no standby", "-"],
                [
                    "sends per slot",
                    1.0 if not ours["duplicates"] else float("nan"),
                    naive["sends_per_slot"],
                    "1 (no fencing)",
                ],
                ["duplicate slots", ours["duplicates"], naive["duplicates"], "-"],
                ["missed slots (catch-up all)", ours["missed"], "-", "-"],
            ],
        )
    )
    print(
        f"targets: kill -9 <= {TARGET_KILL9_S:g} s with a {lease:g} s lease: "
        f"{verdict(ours['kill9_max_s'] <= TARGET_KILL9_S)}; SIGTERM <= {TARGET_SIGTERM_S:g} s: "
        f"{verdict(ours['sigterm_max_s'] <= TARGET_SIGTERM_S)}; zero duplicate and missed: "
        f"{verdict(ours['duplicates'] == 0 and ours['missed'] == 0)}"
    )
    return {
        "lease_s": lease,
        "ours_kill9_median_s": ours["kill9_median_s"],
        "ours_kill9_max_s": ours["kill9_max_s"],
        "ours_sigterm_median_s": ours["sigterm_median_s"],
        "ours_sigterm_max_s": ours["sigterm_max_s"],
        "ours_duplicates": ours["duplicates"],
        "ours_missed": ours["missed"],
        "ours_sends": ours["sends"],
        "naive_sends_per_slot": naive["sends_per_slot"],
        "naive_duplicates": naive["duplicates"],
    }


if __name__ == "__main__":
    sys.exit("run through `python -m bench failover`")
